"""What both training scripts do around their loops, as plain functions: the command line and config (with
--resume, or train.init_from for a new run from other weights), device and precision, the run folder, and
checkpoints (save and restore). What happens inside the loops is utils/train/loop.py; each script keeps its own loop,
top to bottom."""
import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

import torch

from utils.core.checkpoint import FORMAT, last_checkpoint, load_checkpoint_file, save_run_checkpoint
from utils.core.config import dump_yaml, load_config, to_dict
from utils.core.distributed import (DistInfo, cleanup, gather_rng_states, init_distributed,
                               restore_rng_states, select_device)
from utils.core.errors import UserError, command
from utils.core.precision import resolve_precision
from utils.core.runlog import setup_logging


@dataclass
class Run:
    """What every training run has: its config, the checkpoint it resumes (None for a new run) or the one whose
    weights it starts from (train.init_from), the script that runs it, its processes, device and precision, its
    console log and its folder."""
    cfg: Any
    ckpt: Optional[dict]
    init: Optional[dict]
    kind: str                   # "vqgan" | "transformer": the checkpoint kind it writes
    script: str                 # the script's file name, for the resume hint
    dist: DistInfo
    device: torch.device
    precision: str              # fp32 | bf16 | fp16: train.precision, with auto resolved for this device
    log: logging.Logger
    dir: str


def start_run(argv, cls, kind: str, script: str, default_config: str, description: str) -> Run:
    """Parses the command line, joins the process group under torchrun, and resolves the config, device and
    precision; the first line of the run says which precision and why. The run folder is made later, by
    prepare_run_dir, once the script has checked what it needs."""
    args = parse_args(argv, default_config, description)
    dist_info = init_distributed()
    log = setup_logging(dist_info.is_main)
    cfg, ckpt, init = resolve_config(cls, args, kind)
    device = select_device(cfg.train.device, dist_info)
    precision, why = resolve_precision(cfg.train.precision, device)
    log.info(f"precision {precision} ({why})")
    return Run(cfg, ckpt, init, kind, script, dist_info, device, precision, log, run_dir_of(cfg))


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


# what a checkpoint must hold to be resumed exactly (a converted official model, for one, holds only weights)
RESUMABLE = ("optimizer", "scaler", "rng", "data")


def resolve_config(cls, args, kind: str):
    """(config, checkpoint to resume or None, checkpoint to start from or None). A resumed run takes its config
    from the checkpoint and applies the command-line overrides on top; a new run with train.init_from takes its
    model section from that checkpoint (see init_config)."""
    if args.resume is None:
        cfg = load_config(cls, args.config, args.overrides)
        if not cfg.train.init_from:
            return cfg, None, None
        init = load_checkpoint_file(cfg.train.init_from, kind)
        return init_config(cfg, init, args.overrides), None, init
    path = args.resume
    if not path:
        path = last_checkpoint(run_dir_of(load_config(cls, args.config, args.overrides)))
        if not os.path.isfile(path):
            raise UserError(f"nothing to resume: no checkpoint at '{path}'; start the run without --resume")
    ckpt = load_checkpoint_file(path, kind)
    missing = [k for k in RESUMABLE if k not in ckpt]
    if missing:
        raise UserError(f"'{path}' is not a resumable training checkpoint (it has no {', '.join(missing)}: a "
                        f"converted or exported model holds only weights); start a new run from its weights with "
                        f"train.init_from={path}")
    cfg = load_config(cls, base=ckpt["config"], base_name=f"checkpoint '{path}'", overrides=args.overrides)
    return cfg, ckpt, None


def init_config(cfg, init: dict, overrides) -> Any:
    """The config of a new run that starts from the weights of `init` (train.init_from): the keys that define its
    networks (cfg.init_keys: the model section, and what else the stage names) are the checkpoint's, and one
    given on the command line with another value is an error naming both."""
    path = cfg.train.init_from
    theirs = load_config(type(cfg), base=init["config"], base_name=f"train.init_from '{path}'")
    given = {o.partition("=")[0].strip() for o in overrides}
    for key in cfg.init_keys(init):
        section, name = key.split(".")
        mine, other = getattr(getattr(cfg, section), name), getattr(getattr(theirs, section), name)
        if key in given and mine != other:
            raise UserError(f"{key}={mine} on the command line contradicts train.init_from '{path}', whose model has "
                            f"{key}={other}; leave {key} out (the model comes from that checkpoint), or train from "
                            f"scratch without train.init_from")
        setattr(getattr(cfg, section), name, other)
    cfg.check(f"train.init_from '{path}'")
    return cfg


def prepare_run_dir(run: Run) -> None:
    """Makes the run folder (rank 0), refusing to overwrite another run's checkpoint, and writes config.yaml."""
    d = run.dir
    if not run.dist.is_main:
        return
    if run.ckpt is None and os.path.exists(last_checkpoint(d)):
        raise UserError(f"run folder '{d}' already holds a run: resume it with --resume, "
                        f"or choose another run.name=... (or delete the folder)")
    try:
        os.makedirs(os.path.dirname(last_checkpoint(d)), exist_ok=True)
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


def load_init(run: Run, **modules) -> None:
    """A new run's start from train.init_from: each named entry the checkpoint has (its model, a discriminator)
    is loaded into its module, strictly; optimizers, RNG and the step start afresh."""
    loaded = [name for name, m in modules.items() if run.init.get(name) is not None]
    for name in loaded:
        modules[name].load_state_dict(run.init[name])
    run.log.info(f"starting from the weights of train.init_from '{run.cfg.train.init_from}' (step "
                 f"{run.init.get('step', 0)} of its run): {', '.join(loaded)}; new optimizer state, step 0")


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
