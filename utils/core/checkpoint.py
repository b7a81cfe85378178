"""Checkpoint files: atomic writes, rotation of periodic copies, the format marker, loading by kind, content hashes."""
import glob
import hashlib
import os
import tempfile

import torch

from utils.core.errors import UserError

FORMAT = 1


def last_checkpoint(run_dir: str) -> str:
    """A run folder's latest checkpoint: RUN/checkpoints/last.pt."""
    return os.path.join(run_dir, "checkpoints", "last.pt")


def cache_dir(out_dir: str) -> str:
    """The folder under run.out_dir that runs share: stage 2's token grids, the judges of generated images."""
    return os.path.join(out_dir, "cache")


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


def save_run_checkpoint(state: dict, run_dir: str, step: int, keep_last: int) -> None:
    """checkpoints/last.pt, plus step_XXXXXXX.pt copies of which the newest `keep_last` are kept."""
    last = last_checkpoint(run_dir)
    folder = os.path.dirname(last)
    save_atomic(state, last)
    if keep_last > 0:
        save_atomic(state, os.path.join(folder, f"step_{step:07d}.pt"))
        rotate(folder, keep_last)


def rotate(folder: str, keep: int) -> None:
    """Keep the `keep` newest step_XXXXXXX.pt files in `folder` (last.pt is never touched)."""
    steps = sorted(glob.glob(os.path.join(folder, "step_*.pt")))
    for old in steps[:max(0, len(steps) - keep)]:
        os.remove(old)


def load_checkpoint_file(path: str, kind: str, map_location="cpu") -> dict:
    """torch.load a project checkpoint and check that it is of the expected kind."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at '{path}': train one first, or pass the right path")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"'{path}' is not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise UserError(f"'{path}' is not a checkpoint of this project (no 'kind'); convert official ones with "
                        "python -m utils.convert_taming")
    if ckpt["kind"] != kind:
        raise UserError(f"'{path}' is a {ckpt['kind']} checkpoint, expected a {kind} checkpoint")
    return ckpt


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
