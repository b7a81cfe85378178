"""Precision: what train.precision=auto chooses on this machine, and the autocast context of forward passes.

bf16 pays only where the hardware computes it: CUDA GPUs with bf16 support, and CPUs with the avx512_bf16 or
amx_bf16 instructions (measured on the shapes quickstart: a VQGAN step 1.6x and a GPT step 2.3x faster than
fp32 on an AMD EPYC with AVX-512-BF16). Elsewhere PyTorch emulates it: with oneDNN and PyTorch's kernels held
to AVX2, as on most laptops, the same steps ran 15 to 20 times slower than fp32. torch has no public check for
native CPU bf16 (its mkldnn bf16 check is also true where bf16 is emulated), so the CPU flags decide.
"""
import os
from contextlib import nullcontext

import torch

# oneDNN ISA limits and ATen CPU capabilities below the bf16 instructions (as set to emulate an older CPU)
_ONEDNN_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}
_ATEN_WITHOUT_BF16 = {"DEFAULT", "AVX2"}


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (Linux); empty where there is no /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16_native() -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, why)."""
    for var, limited in (("ONEDNN_MAX_CPU_ISA", _ONEDNN_WITHOUT_BF16), ("ATEN_CPU_CAPABILITY", _ATEN_WITHOUT_BF16)):
        value = os.environ.get(var, "").upper()
        if value in limited:
            return False, f"{var}={value} holds the kernels below the bf16 instructions, so bf16 would be emulated"
    found = [f for f in ("amx_bf16", "avx512_bf16") if f in cpu_flags()]
    if found:
        return True, f"this CPU computes bf16 natively ({found[0]})"
    return False, "this CPU has neither avx512_bf16 nor amx_bf16, so bf16 would be emulated, slower than fp32"


def resolve_precision(setting: str, device: torch.device) -> tuple[str, str]:
    """(fp32 | bf16 | fp16, why) for train.precision=`setting` on `device`; explicit values keep their meaning."""
    if setting != "auto":
        return setting, f"train.precision={setting}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "train.precision=auto: this GPU supports bf16"
        return "fp16", "train.precision=auto: this GPU has no bf16, so fp16 with a gradient scaler"
    if device.type == "cpu":
        native, why = cpu_bf16_native()
        return ("bf16" if native else "fp32"), f"train.precision=auto: {why}"
    return "fp32", f"train.precision=auto: fp32 on {device.type}"


def autocast_context(device: torch.device, precision: str):
    """Nothing for fp32, autocast for bf16 and fp16, on CPU and GPU alike."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
