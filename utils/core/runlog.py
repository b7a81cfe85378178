"""Rank-0 logging: Python logging to the console, the progress bar, TensorBoard scalars and images, metrics.json."""
import json
import logging
import os
import sys

import torch
from tqdm import tqdm

log = logging.getLogger("vqgan")


def setup_logging(is_main: bool) -> logging.Logger:
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    return log


class RunLogger:
    """The progress bar, TensorBoard writer and metrics.json of one run; nothing off the main process."""

    def __init__(self, run_dir: str, enabled: bool, max_steps: int, step: int, desc: str):
        self.run_dir, self.enabled, self.tb = run_dir, enabled, None
        self.bar = tqdm(total=max_steps, initial=step, disable=not enabled, dynamic_ncols=True, desc=desc)
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(run_dir)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.tb is None:
            return
        for k, v in values.items():
            self.tb.add_scalar(f"{prefix}/{k}", float(v), step)

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        """grid: (C, H, W) in [0, 1]."""
        if self.tb is not None:
            self.tb.add_image(tag, grid.clamp(0, 1), step)

    def metrics(self, values: dict) -> None:
        """Rewrites metrics.json atomically with the latest validation figures."""
        if not self.enabled:
            return
        path = os.path.join(self.run_dir, "metrics.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(values, f, indent=2)
        os.replace(tmp, path)

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
