"""DDP set-up from torchrun's environment, and the few collectives the training loops need."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.core.errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def select_device(name: str, info: DistInfo, option: str = "train.device=") -> torch.device:
    """"auto" picks cuda (this rank's GPU), then mps, then cpu. `option` names the setting in error messages
    ("train.device=" or "--device ")."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() and not info.enabled:
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"{option}{name} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{option}{name} but CUDA is not available here; use {option}auto or {option}cpu")
        if dev.index is None:
            dev = torch.device("cuda", info.local_rank)
    return dev


def init_distributed() -> DistInfo:
    """Joins the process group when torchrun set RANK/WORLD_SIZE (nccl on GPUs, gloo on CPU)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend)
    return info


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def gather_rng_states(device: torch.device) -> list:
    """Every rank's torch RNG states (CPU, and the device's when it is CUDA), for exact resume."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, state)
        return out
    return [state]


def restore_rng_states(states: list, rank: int, device: torch.device) -> None:
    if rank >= len(states):
        return  # resumed on more ranks than saved: the new ranks keep their seeded state
    s = states[rank]
    torch.set_rng_state(s["cpu"])
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)
