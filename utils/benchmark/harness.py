"""Timing: warm up, then alternate candidate and baseline runs and take medians."""
import os
import statistics
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository, for configs


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t) * 1000.0


def alternate(ours, base, device, warmup: int, repeats: int) -> dict:
    """Medians in ms of `ours` and `base` (None: no baseline), run alternately after warm-up."""
    for _ in range(warmup):
        ours()
        if base is not None:
            base()
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(ours, device))
        if base is not None:
            b.append(timed(base, device))
    out = {"median_ms": statistics.median(a), "runs": repeats}
    if base is not None:
        out["baseline_median_ms"] = statistics.median(b)
        out["ratio"] = out["baseline_median_ms"] / out["median_ms"]
    return out
