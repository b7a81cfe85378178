"""Token grids of a dataset, encoded once by the frozen stage-1 model and cached on disk.

The cache file is named by the stage-1 checkpoint's content hash, the dataset (with a short hash of
the settings that define its images) and the split, so runs share it and a changed stage-1 model can
never be paired with stale tokens.
"""
import hashlib
import json
import os

import torch
from torch.utils.data import DataLoader

from utils.checkpoint import save_atomic
from utils.errors import UserError


def dataset_key(data, seed: int) -> str:
    """'{dataset}-{hash}': the dataset kind and a hash of every setting that changes its images."""
    fields = {"dataset": data.dataset, "image_size": data.image_size, "channels": data.channels}
    if data.dataset == "shapes":
        fields.update(num_train=data.num_train, num_val=data.num_val, seed=seed)
    else:
        fields.update(root=os.path.abspath(data.root))
    if data.dataset == "folder":
        fields.update(val_root=data.val_root and os.path.abspath(data.val_root), val_fraction=data.val_fraction)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
    return f"{data.dataset}-{digest}"


def cache_path(cache_dir: str, stage1_sha: str, key: str, split: str) -> str:
    return os.path.join(cache_dir, f"{stage1_sha[:16]}_{key}_{split}.pt")


@torch.inference_mode()
def encode_dataset(vq, dataset, device, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N, h, w) int16/int32, labels (N,) long) for every image of `dataset`, in order."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    toks, labels = [], []
    dtype = torch.int16 if vq.codebook.codebook_size <= 32767 else torch.int32
    for x, y in loader:
        toks.append(vq.encode_to_indices(x.to(device)).to(dtype).cpu())
        labels.append(torch.as_tensor(y).long())
    return torch.cat(toks), torch.cat(labels)


def load_or_encode(path: str, vq, dataset, device, meta: dict, log=None) -> dict:
    """The cached {"tokens", "labels", "meta"} at `path`, or encode the dataset and write it there.
    A cache whose metadata disagrees with `meta` (codebook size, grid, stage-1 hash) is an error."""
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
        log.info(f"encoding {len(dataset)} images with the stage-1 model -> {path}")
    tokens, labels = encode_dataset(vq, dataset, device)
    out = {"tokens": tokens, "labels": labels, "meta": meta}
    save_atomic(out, path)
    return out
