"""Token grids of a dataset, encoded once by the frozen stage-1 model and cached on disk.

A cache file is named by the content hash of each tokenizer used (the image tokenizer, and the condition
tokenizer of a conditional model, whose token grids the file holds too), the dataset with two short hashes (of
the settings that define its images, and of its files: their sorted names, sizes and modification times), and
the split. Runs share it; a changed stage-1 model or changed files can never be paired with stale tokens,
and when the files of a dataset change, the run says so and encodes them again.
"""
import glob
import hashlib
import json
import os

import torch
from torch.utils.data import DataLoader

from utils.core.checkpoint import save_atomic
from utils.core.errors import UserError


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def dataset_key(name: str, settings: dict, datasets) -> str:
    """'{name}-{settings}-{files}': the dataset kind, a hash of `settings` (every setting that changes its images or
    labels: utils.data.registry.cache_settings) and a hash of the files `datasets` were read from (path, size,
    modification time; cheap, no file is read)."""
    files = []
    for ds in datasets:
        for path in getattr(ds, "sources", ()):
            st = os.stat(path)
            files.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
    return f"{name}-{_digest(settings)}-{_digest(sorted(files))}"


def cache_path(cache_dir: str, tokenizer_shas: list[str], key: str, split: str) -> str:
    """tokenizer_shas: the image tokenizer's content hash, then the condition tokenizer's when there is one."""
    return os.path.join(cache_dir, f"{'+'.join(s[:16] for s in tokenizer_shas)}_{key}_{split}.pt")


@torch.inference_mode()
def encode_dataset(vq, dataset, device, batch_size: int = 64, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N, h, w) int16/int32, labels (N,) long) for every image of `dataset`, in order."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    toks, labels = [], []
    dtype = torch.int16 if vq.codebook.codebook_size <= 32767 else torch.int32
    for x, y in loader:
        toks.append(vq.encode_to_indices(x.to(device)).to(dtype).cpu())
        labels.append(torch.as_tensor(y).long())
    return torch.cat(toks), torch.cat(labels)


def load_or_encode(path: str, vq, dataset, device, meta: dict, log=None, num_workers: int = 0, cond_vq=None) -> dict:
    """The cached {"tokens", "labels", "meta"} at `path` (with cond_vq also "cond_tokens": the grids of the
    condition maps), or encode the dataset and write it there. A cache whose metadata disagrees with `meta`
    (codebook size, grid, tokenizer hashes) is an error."""
    if os.path.isfile(path):
        cached = torch.load(path, map_location="cpu", weights_only=True)
        for k, v in meta.items():
            if cached["meta"].get(k) != v:
                raise UserError(f"token cache '{path}' does not match the stage-1 model: {k} is "
                                f"{cached['meta'].get(k)!r} there, {v!r} here; delete the file to re-encode")
        if log:
            log.info(f"token cache: {path} ({len(cached['tokens'])} grids)")
        return cached
    if log:
        stale = sorted(glob.glob(path.rsplit("-", 1)[0] + "-*_" + path.rsplit("_", 1)[1]), key=os.path.getmtime)
        if stale:
            then = torch.load(stale[-1], map_location="cpu", weights_only=True)["meta"].get("files", "?")
            log.info(f"token cache: the files of data.root changed since '{stale[-1]}' was written ({then} "
                     f"files then, {meta.get('files', '?')} now, or other sizes or times): re-encoding")
        log.info(f"encoding {len(dataset)} images with the stage-1 model -> {path}")
    tokens, labels = encode_dataset(vq, dataset.with_view("image"), device, num_workers=num_workers)
    out = {"tokens": tokens, "labels": labels, "meta": meta}
    if cond_vq is not None:
        out["cond_tokens"], _ = encode_dataset(cond_vq, dataset.with_view("condition"), device, num_workers=num_workers)
    save_atomic(out, path)
    return out
