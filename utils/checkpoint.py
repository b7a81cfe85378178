"""Checkpoint files: atomic writes, rotation of periodic copies, and the format marker."""
import glob
import os
import tempfile

import torch

FORMAT = 1


def save_atomic(obj: dict, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`:
    a crash at any moment leaves either the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def rotate(folder: str, keep: int) -> None:
    """Keep the `keep` newest step_XXXXXXX.pt files in `folder` (last.pt is never touched)."""
    steps = sorted(glob.glob(os.path.join(folder, "step_*.pt")))
    for old in steps[:max(0, len(steps) - keep)]:
        os.remove(old)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers, so state-dict keys carry no prefixes."""
    while True:
        if hasattr(model, "module"):  # DistributedDataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model
