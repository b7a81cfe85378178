"""What both training scripts share: command line, config resolution with --resume, the run folder,
signal handling, learning-rate schedule, EMA, and the user-error exit."""
import argparse
import copy
import math
import os
import signal
import sys

import torch

from utils.checkpoint import load_checkpoint_file
from utils.config import load_config
from utils.errors import UserError


def parse_args(argv, default_config: str, description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=default_config, help=f"YAML config (default: {default_config})")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="resume CKPT, or without a path the run folder's checkpoints/last.pt")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    # `--resume train.max_steps=60`: argparse hands the override to --resume; put it back in its place
    if args.resume and "=" in args.resume and not os.path.exists(args.resume):
        wanted = set(args.overrides) | {args.resume}
        args.overrides = [a for a in argv if a in wanted]
        args.resume = ""
    return args


def run_dir_of(cfg) -> str:
    return os.path.join(cfg.run.out_dir, cfg.run.name)


def resolve_config(cls, args, kind: str):
    """(config, checkpoint dict or None). A resumed run takes its config from the checkpoint and
    applies the command-line overrides on top."""
    if args.resume is None:
        return load_config(cls, args.config, args.overrides), None
    path = args.resume
    if not path:
        path = os.path.join(run_dir_of(load_config(cls, args.config, args.overrides)), "checkpoints", "last.pt")
        if not os.path.isfile(path):
            raise UserError(f"nothing to resume: no checkpoint at '{path}'; start the run without --resume")
    ckpt = load_checkpoint_file(path, kind)
    cfg = load_config(cls, base=ckpt["config"], base_name=f"checkpoint '{path}'", overrides=args.overrides)
    return cfg, ckpt


def prepare_run_dir(cfg, resuming: bool, is_main: bool) -> str:
    d = run_dir_of(cfg)
    if not is_main:
        return d
    if not resuming and os.path.exists(os.path.join(d, "checkpoints", "last.pt")):
        raise UserError(f"run folder '{d}' already holds a run: resume it with --resume, "
                        f"or choose another run.name=... (or delete the folder)")
    try:
        os.makedirs(os.path.join(d, "checkpoints"), exist_ok=True)
        probe = os.path.join(d, ".write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to the run folder '{d}' ({e.strerror}); choose another run.out_dir=...") from None
    return d


class StopSignal:
    """SIGINT/SIGTERM set a flag that the loop checks after each step, so that it saves and exits cleanly."""

    def __init__(self):
        self.received = None
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name


def lr_factor(step: int, warmup: int, max_steps: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine decay to `min_ratio` at max_steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class EMA:
    """An exponential moving average copy of a model's weights (buffers are copied as they are)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        ema_p = [p for p in self.model.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - self.decay)
        for b, s in zip(self.model.buffers(), model.buffers()):
            b.copy_(s)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd, strict=True)


def autocast_context(device: torch.device, precision: str):
    """One precision context for CPU and GPU: nothing for fp32, autocast for bf16/fp16."""
    from contextlib import nullcontext
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def main_guard(fn, argv=None) -> None:
    """Runs fn(argv); a UserError becomes one line on stderr and exit code 2, no traceback."""
    from utils.distributed import cleanup
    try:
        fn(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        cleanup()
        sys.exit(2)
    cleanup()


def start_position(ckpt, seed: int, rank: int, device) -> tuple[int, int, int]:
    """(step, epoch, batch in epoch) to start from, with the RNG restored from `ckpt` (every rank its
    own state), or seeded per rank for a fresh run."""
    from utils.distributed import restore_rng_states
    if ckpt is None:
        torch.manual_seed(seed + rank)
        return 0, 0, 0
    restore_rng_states(ckpt["rng"], rank, device)
    return ckpt["step"], ckpt["data"]["epoch"], ckpt["data"]["batch"]


def wrap_ddp(module: torch.nn.Module, device, **kw) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None, **kw)
