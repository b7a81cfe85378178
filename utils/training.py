"""The mechanics both training scripts share, as plain functions: the command line and config (with --resume),
the run folder, checkpoints (save and restore), learning-rate schedule, EMA, the per-step agreement on a
non-finite loss or a stop signal, and the end of a run. Each script keeps its own loop, top to bottom."""
import argparse
import copy
import logging
import math
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from utils.checkpoint import FORMAT, load_checkpoint_file, save_run_checkpoint
from utils.config import dump_yaml, load_config, to_dict
from utils.distributed import (DistInfo, all_reduce_sum, cleanup, gather_rng_states, init_distributed,
                               restore_rng_states, select_device)
from utils.errors import UserError, command
from utils.runlog import RunLogger, setup_logging


@dataclass
class Run:
    """What every training run has: its config, the checkpoint it resumes (None for a new run), the script that
    runs it, its processes and device, its console log and its folder."""
    cfg: Any
    ckpt: Optional[dict]
    kind: str                   # "vqgan" | "transformer": the checkpoint kind it writes
    script: str                 # the script's file name, for the resume hint
    dist: DistInfo
    device: torch.device
    log: logging.Logger
    dir: str


def start_run(argv, cls, kind: str, script: str, default_config: str, description: str) -> Run:
    """Parses the command line, joins the process group under torchrun, and resolves the config and device.
    The run folder is made later, by prepare_run_dir, once the script has checked what it needs."""
    args = parse_args(argv, default_config, description)
    dist_info = init_distributed()
    log = setup_logging(dist_info.is_main)
    cfg, ckpt = resolve_config(cls, args, kind)
    device = select_device(cfg.train.device, dist_info)
    return Run(cfg, ckpt, kind, script, dist_info, device, log, run_dir_of(cfg))


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


def prepare_run_dir(run: Run) -> None:
    """Makes the run folder (rank 0), refusing to overwrite another run's checkpoint, and writes config.yaml."""
    d = run.dir
    if not run.dist.is_main:
        return
    if run.ckpt is None and os.path.exists(os.path.join(d, "checkpoints", "last.pt")):
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


def write_config(run: Run) -> None:
    if run.dist.is_main:
        dump_yaml(run.cfg, os.path.join(run.dir, "config.yaml"))


def restore(ckpt: dict, **state) -> None:
    """Loads each named entry of a checkpoint into its object (modules strictly, optimizers, scalers)."""
    for name, obj in state.items():
        obj.load_state_dict(ckpt[name])


def start_position(run: Run) -> tuple[int, int, int]:
    """(step, epoch, batch in epoch) to start from, with the RNG restored from the checkpoint (every rank its
    own state), or seeded per rank for a new run."""
    if run.ckpt is None:
        torch.manual_seed(run.cfg.run.seed + run.dist.rank)
        return 0, 0, 0
    restore_rng_states(run.ckpt["rng"], run.dist.rank, run.device)
    return run.ckpt["step"], run.ckpt["data"]["epoch"], run.ckpt["data"]["batch"]


def save_checkpoint(run: Run, step: int, epoch: int, batch: int, **state) -> None:
    """Writes checkpoints/last.pt (and a numbered copy when train.keep_last asks for one): the run's kind,
    format, config and `state`, plus every rank's RNG and the data position for exact resume. Every rank must
    call it (the RNG states are gathered); rank 0 writes."""
    rng = gather_rng_states(run.device)
    if not run.dist.is_main:
        return
    ckpt = {"kind": run.kind, "format": FORMAT, "config": to_dict(run.cfg), **state, "step": step, "rng": rng,
            "data": {"epoch": epoch, "batch": batch}}
    save_run_checkpoint(ckpt, run.dir, step, run.cfg.train.keep_last)


def lr_factor(step: int, warmup: int, max_steps: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine decay to `min_ratio` at max_steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def set_lr(step: int, t, *optimizers: tuple[torch.optim.Optimizer, float]) -> None:
    """Sets each (optimizer, base learning rate) to its rate at `step` under the schedule of train config `t`."""
    scale = lr_factor(step, t.warmup_steps, t.max_steps, t.lr_schedule, t.min_lr_ratio)
    for opt, base in optimizers:
        for g in opt.param_groups:
            g["lr"] = base * scale


def optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params, grad_clip: float) -> None:
    """Clips the global gradient norm (when grad_clip > 0), steps through the gradient scaler, clears the gradients."""
    if grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


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


class StopSignal:
    """SIGINT/SIGTERM set a flag that the loop checks after each step, so that it saves and exits cleanly."""

    def __init__(self):
        self.received = None
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name


def check_step(run: Run, stop: StopSignal, terms: dict, step: int) -> bool:
    """The one collective of every step: all ranks agree on a non-finite loss term (an error naming the step and
    the terms; nothing of this step is saved) and on a stop signal received by any of them. Returns whether to stop
    after this step."""
    bad = torch.stack([(~torch.isfinite(v.detach())).any() for v in terms.values()]).any()
    flags = torch.stack([bad.float().to(run.device),
                         torch.tensor(float(stop.received is not None), device=run.device)])
    all_reduce_sum(flags)
    if flags[0].item() > 0:
        parts = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
        raise UserError(f"non-finite loss at step {step + 1} ({parts}); nothing was saved from this step, "
                        f"'{run.dir}/checkpoints/last.pt' is the last good state; lower train.lr, "
                        f"set train.grad_clip, or use train.precision=fp32")
    return flags[1].item() > 0


def due(step: int, every: int, max_steps: int) -> bool:
    """Whether a periodic action (logging, evaluation, checkpoint) falls on `step`: every `every` steps and at
    the end."""
    return step % every == 0 or step == max_steps


def evaluate_and_save(run: Run, step: int, stopping: bool, validate: Callable[[int], dict],
                      save: Callable[[int], None], metrics: dict) -> dict:
    """After an optimizer step: evaluate every train.eval_every steps, save every train.ckpt_every steps, both also
    at the end, and save when stopping. Returns the latest validation figures."""
    t = run.cfg.train
    if due(step, t.eval_every, t.max_steps):
        metrics = validate(step)
    if due(step, t.ckpt_every, t.max_steps) or stopping:
        save(step)
    return metrics


@contextmanager
def rng_kept():
    """Work inside (evaluation, sampling) does not move the training RNG."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


def end_of_run(run: Run, logger: RunLogger, step: int, stopped_by: Optional[StopSignal], metrics: dict,
               validate: Callable[[int], dict], save: Callable[[int], None]) -> dict:
    """Stopped by a signal: say how to continue. Otherwise: when the loop did not evaluate (resumed at or past the
    end), evaluate and save now; then one line with the final figures. Closes the logger; returns the figures."""
    logger.bar.close()
    if stopped_by is not None:
        run.log.info(f"stopped by {stopped_by.received or 'a signal on another rank'} at step {step}; checkpoint "
                     f"saved, continue with: python {run.script} --resume {run.dir}/checkpoints/last.pt")
    else:
        if not metrics:
            metrics = validate(step)
            save(step)
        run.log.info(f"done: {step} steps; validation {figures(metrics)}; run folder {run.dir}")
    logger.close()
    return metrics


def figures(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "step")


def main_guard(train, argv=None) -> None:
    """A training script's entry point: train(argv) as a command (a UserError exits 2 with one line), leaving the
    process group in every case."""
    try:
        command(train)(argv)
    finally:
        cleanup()


def wrap_ddp(module: torch.nn.Module, device, **kw) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None, **kw)
