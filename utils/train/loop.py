"""What happens inside both training loops, as plain functions: the learning rate, clipping and the optimizer step,
the EMA, the one collective per step (a non-finite loss or gradient, a stop signal), when a periodic action is due,
and the end of the run."""
import copy
import functools
import math
import signal
import time
from contextlib import contextmanager
from typing import Optional

import torch

from utils.core.distributed import all_reduce_sum
from utils.core.errors import UserError
from utils.core.runlog import RunLogger
from utils.train.run import Run


def lr_factor(step: int, warmup: int, max_steps: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine decay to `min_ratio` at max_steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def set_lr(step: int, t, *optimizers: tuple[torch.optim.Optimizer, float]) -> None:
    """Sets each (optimizer, base learning rate) to its rate at `step` under the schedule of train config `t`; a
    parameter group with a `base_lr` of its own (Muon's matrices) is scaled from that."""
    scale = lr_factor(step, t.warmup_steps, t.max_steps, t.lr_schedule, t.min_lr_ratio)
    for opt, base in optimizers:
        for g in opt.param_groups:
            g["lr"] = g.get("base_lr", base) * scale


def clip_gradients(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params,
                   grad_clip: float) -> Optional[torch.Tensor]:
    """Clips the global gradient norm to grad_clip (when > 0) and returns the norm before clipping, for the
    non-finite check. Under fp16 the gradient scaler owns that check (it skips the steps that overflow), so the
    norm is None there."""
    params = [p for p in params if p.grad is not None]
    if grad_clip > 0:
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    elif scaler.is_enabled():
        return None
    elif not params:
        norm = torch.zeros(())
    else:
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
    return None if scaler.is_enabled() else norm


def optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Steps through the gradient scaler and clears the gradients."""
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
    """SIGINT/SIGTERM set a flag that the loop checks after each step, so that it saves and exits cleanly. The
    handlers it replaces come back when the training function returns or raises (keeps_signal_handlers)."""

    def __init__(self):
        self.received = None
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name


def keeps_signal_handlers(train):
    """For a training function that installs a StopSignal: the SIGINT and SIGTERM handlers are as they were once
    it returns or raises, so that Ctrl-C works again in the process that called it (a notebook, the tests)."""
    @functools.wraps(train)
    def wrapped(*args, **kwargs):
        saved = [(s, signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)]
        try:
            return train(*args, **kwargs)
        finally:
            for s, handler in saved:
                signal.signal(s, handler)
    return wrapped


def check_step(run: Run, stop: StopSignal, step: int, micro_terms: list[dict],
               grad_norms: dict[str, Optional[torch.Tensor]]) -> bool:
    """The one collective of every step, before the optimizer steps: all ranks agree on a non-finite loss term in
    any micro-batch or a non-finite gradient norm (an error naming the step and what was not finite; nothing of
    this step reaches the weights or a checkpoint), and on a stop signal received by any of them. Returns whether
    to stop after this step."""
    bad_loss = torch.stack([(~torch.isfinite(v.detach())).any() for t in micro_terms for v in t.values()]).any()
    norms = {k: v for k, v in grad_norms.items() if v is not None}
    bad_grad = torch.stack([~torch.isfinite(v) for v in norms.values()]).any() if norms else torch.tensor(False)
    flags = torch.stack([bad_loss.float().to(run.device), bad_grad.float().to(run.device),
                         torch.tensor(float(stop.received is not None), device=run.device)])
    all_reduce_sum(flags)
    hint = (f"nothing was saved from this step, '{run.dir}/checkpoints/last.pt' is the last good state; lower "
            f"train.lr, set train.grad_clip, or use train.precision=fp32")
    if flags[0].item() > 0:
        k, terms = next(((k, t) for k, t in enumerate(micro_terms)
                         if not all(torch.isfinite(v).all() for v in t.values())), (None, micro_terms[-1]))
        parts = ", ".join(f"{name}={v.item():.4g}" for name, v in terms.items())
        if k is None:
            detail = "on another process"
        else:
            detail = (f"micro-batch {k + 1} of {len(micro_terms)}: " if len(micro_terms) > 1 else "") + parts
        raise UserError(f"non-finite loss at step {step + 1} ({detail}); {hint}")
    if flags[1].item() > 0:
        parts = ", ".join(f"{name}={v.item():.4g}" for name, v in norms.items())
        raise UserError(f"non-finite gradient norm at step {step + 1} ({parts}) although the loss was finite; {hint}")
    return flags[2].item() > 0


def due(step: int, every: int, max_steps: int) -> bool:
    """Whether a periodic action (logging, evaluation, checkpoint) falls on `step`: every `every` steps and at
    the end."""
    return step % every == 0 or step == max_steps


clock = time.monotonic  # the time source of Pace (a test replaces it)


class Pace:
    """Times the first `over` steps after the first one of this process (which pays for warm-up) and, when
    train.max_steps would take more than `limit_s` at that speed, says so once: one line with the estimate that
    points to `cpu_config`, the configs sized for a laptop. Not an error: the run goes on."""

    def __init__(self, start_step: int, max_steps: int, cpu_config: str, over: int = 10, limit_s: float = 86400.0):
        self.start, self.max_steps, self.cpu_config, self.over, self.limit_s = start_step, max_steps, cpu_config, \
            over, limit_s
        self.t0 = None

    def estimate(self, step: int):
        """Called after each step (`step`: steps done). Returns the line to log once the timing is in and the rest of
        the run is longer than limit_s, else None."""
        if step == self.start + 1:
            self.t0 = clock()
        elif self.t0 is not None and step == self.start + 1 + self.over:
            per_step = (clock() - self.t0) / self.over
            self.t0 = None
            rest = per_step * (self.max_steps - step)
            if rest > self.limit_s:
                return (f"at {per_step:.2f} s per step here, the {self.max_steps - step} steps left of "
                        f"train.max_steps={self.max_steps} take about {rest / 86400:.1f} days; for a laptop or a "
                        f"CPU see {self.cpu_config} (minutes on 2 cores), or lower train.max_steps")
        return None


def save_then_validate(step: int, t, save, validate, metrics: dict, stopping: bool = False,
                       at_end: bool = False) -> dict:
    """The one order of both loops after a step: the checkpoint first (a failure while evaluating then loses no
    steps), when due, when stopping or at_end; then the evaluation, when due or at_end. -> the latest metrics."""
    if at_end or stopping or due(step, t.ckpt_every, t.max_steps):
        save(step)
    return validate(step) if at_end or due(step, t.eval_every, t.max_steps) else metrics


@contextmanager
def rng_kept():
    """Work inside (evaluation, sampling) does not move the training RNG."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


def end_of_run(run: Run, logger: RunLogger, step: int, stopped_by: Optional[StopSignal], metrics: dict) -> None:
    """Stopped by a signal: says how to continue; otherwise one line with the final figures. Closes the logger."""
    logger.bar.close()
    if stopped_by is not None:
        run.log.info(f"stopped by {stopped_by.received or 'a signal on another rank'} at step {step}; checkpoint "
                     f"saved, continue with: python {run.script} --resume {run.dir}/checkpoints/last.pt")
    else:
        run.log.info(f"done: {step} steps; validation {figures(metrics)}; run folder {run.dir}")
    logger.close()


def figures(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "step")
