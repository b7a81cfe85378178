"""The precision context of forward passes: nothing for fp32, autocast for bf16 and fp16, on CPU and GPU alike."""
from contextlib import nullcontext

import torch


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
