"""Image folders: the readable images of a tree, labels from its first-level subfolders, condition maps from a
parallel tree, and the dataset that crops and flips an image and its map alike."""
import logging
import os
import warnings

import numpy as np
import torch
from PIL import Image

from utils.core.errors import UserError
from utils.data.images import IMAGE_EXTENSIONS, ImageDataset, item_generator, to_tensor
from utils.data.spec import DatasetSpec, root_settings


def list_images(root: str) -> list[str]:
    """The readable image files under `root`, sorted; unreadable ones are skipped with one warning."""
    if not os.path.isdir(root):
        raise UserError(f"no folder at '{root}'")
    files = []
    for d, _, names in os.walk(root, followlinks=True):
        files += [os.path.join(d, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise UserError(f"no image files in '{root}' (looked for {', '.join(IMAGE_EXTENSIONS)})")
    good = [f for f in sorted(files) if readable(f)]
    if len(good) < len(files):
        warnings.warn(f"skipped {len(files) - len(good)} unreadable image file(s) of {len(files)} in '{root}'")
    if not good:
        raise UserError(f"no readable image in '{root}' ({len(files)} file(s) with image extensions)")
    return good


def readable(path: str) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def subfolder_labels(root: str, files: list[str], classes=None) -> tuple[list[str], list[str], list[int]]:
    """(class names, the files inside a class folder, their labels) with torchvision's ImageFolder convention:
    the first-level subfolders of `root`, sorted, are the classes. `classes`: those of the training tree, which
    a separate validation tree must use. Files directly in `root` belong to no class and are skipped (counted)."""
    top = [os.path.relpath(f, root).split(os.sep)[0] if os.sep in os.path.relpath(f, root) else None for f in files]
    if classes is None:
        classes = sorted({t for t in top if t is not None})
    if not classes:
        raise UserError(f"data.labels=subfolders but '{root}' has no subfolder with images; put each class's images "
                        "in a folder of its own (root/cat/..., root/dog/...)")
    unknown = sorted({t for t in top if t is not None} - set(classes))
    if unknown:
        raise UserError(f"'{root}' has class folders the training images do not have: {unknown}")
    loose = sum(t is None for t in top)
    if loose:
        warnings.warn(f"skipped {loose} image file(s) directly in '{root}': with data.labels=subfolders an image "
                      "belongs to the class folder it is in")
    kept = [(f, classes.index(t)) for f, t in zip(files, top) if t is not None]
    return list(classes), [f for f, _ in kept], [label for _, label in kept]


def paired_maps(root: str, files: list[str], map_root: str) -> tuple[list[str], list[str]]:
    """(the images that have a readable map, their maps): the map of root/a/b.jpg is map_root/a/b.<any image
    extension> (masks are often PNGs beside JPEG photos). Images without one are skipped with one warning."""
    if not os.path.isdir(map_root):
        raise UserError(f"data.condition_root: no folder at '{map_root}'")
    kept, maps = [], []
    for f in files:
        stem = os.path.join(map_root, os.path.splitext(os.path.relpath(f, root))[0])
        found = next((stem + e for e in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS)
                      if os.path.isfile(stem + e)), None)
        if found is not None and readable(found):
            kept.append(f)
            maps.append(found)
    if len(kept) < len(files):
        warnings.warn(f"skipped {len(files) - len(kept)} image(s) of {len(files)} in '{root}' without a readable map "
                      f"in '{map_root}' (the same relative name, any image extension)")
    if not kept:
        raise UserError(f"no image in '{root}' has a map in data.condition_root '{map_root}'")
    return kept, maps


class FolderDataset(ImageDataset):
    """Images under a folder tree: resized on the shorter side, then centre-cropped (val) or randomly cropped and
    flipped (train). `files` come from list_images, which has dropped unreadable ones; `labels` (a class index per
    file) from subfolder_labels; `maps` (a condition map per file: class indices or a paired image) from
    paired_maps, resized, cropped and flipped exactly as its image."""

    def __init__(self, files: list[str], size: int, channels: int, train: bool, seed: int = 0,
                 labels=None, class_names=None, maps=None, condition=None, view: str = "image"):
        super().__init__(class_names, list(files) + list(maps or []), condition, view)
        self.files, self.size, self.channels, self.train, self.seed = files, size, channels, train, seed
        self.maps = maps
        self.labels = torch.as_tensor(labels if labels is not None else [-1] * len(files), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, i: int):
        """(the image at i, its map or None, i), or when they cannot be decoded the next ones that can, and the
        index they came from."""
        for j in range(len(self.files)):  # a file that passed verify() may still be truncated: take the next
            k = (i + j) % len(self.files)
            try:
                with Image.open(self.files[k]) as im:
                    img = im.convert("L" if self.channels == 1 else "RGB")
                mp = None
                if self.maps is not None:
                    with Image.open(self.maps[k]) as im:
                        mp = im.copy() if self.condition.kind == "segmentation" else \
                            im.convert("L" if self.channels == 1 else "RGB")
                return img, mp, k
            except Exception:
                warnings.warn(f"skipping unreadable image '{self.files[k]}'")
        raise UserError("no image in the dataset could be decoded")

    def __getitem__(self, i: int):
        img, mp, k = self._load(i)
        w, h = img.size
        s = self.size / min(w, h)
        new = (max(self.size, round(w * s)), max(self.size, round(h * s)))
        img = img.resize(new, Image.BICUBIC)
        g = item_generator(self.seed, self.epoch, i) if self.train else None
        if self.train:
            left = int(torch.randint(0, new[0] - self.size + 1, (), generator=g))
            top = int(torch.randint(0, new[1] - self.size + 1, (), generator=g))
        else:
            left, top = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        box = (left, top, left + self.size, top + self.size)
        x = to_tensor(np.asarray(img.crop(box)), self.channels)
        flip = self.train and torch.rand((), generator=g) < 0.5
        raw = None
        if self.maps is not None:
            classes = self.condition.kind == "segmentation"
            m = mp.resize(new, Image.NEAREST if classes else Image.BICUBIC).crop(box)
            raw = torch.from_numpy(np.asarray(m, dtype=np.int64)) if classes else to_tensor(np.asarray(m), self.channels)
            raw = raw.flip(-1) if flip else raw
        return self.item(x.flip(-1) if flip else x, raw, self.labels[k], i)


def build(data, seed: int, augment: bool, cond, view: str):
    """(train, val) from the tree at data.root: val from data.val_root, or a deterministic data.val_fraction of the
    files; labels from the first-level subfolders with data.labels=subfolders; maps from data.condition_root."""
    size, ch = data.image_size, data.channels
    files = list_images(data.root)
    classes, labels, val_labels, maps, val_maps = None, None, None, None, None
    if data.labels == "subfolders":
        classes, files, labels = subfolder_labels(data.root, files)
        logging.getLogger("vqgan").info(f"{len(classes)} classes from the subfolders of '{data.root}': "
                                        + ", ".join(f"{i} {c}" for i, c in enumerate(classes)))
    if cond is not None and cond.kind in ("segmentation", "paired"):
        kept, maps = paired_maps(data.root, files, data.condition_root)
        if labels is not None:
            labels = [lab for f, lab in zip(files, labels) if f in set(kept)]
        files = kept
    if data.val_root:
        val_files = list_images(data.val_root)
        if classes is not None:
            _, val_files, val_labels = subfolder_labels(data.val_root, val_files, classes)
        if maps is not None:
            kept, val_maps = paired_maps(data.val_root, val_files, data.condition_root)
            if val_labels is not None:
                val_labels = [lab for f, lab in zip(val_files, val_labels) if f in set(kept)]
            val_files = kept
    else:
        # a deterministic held-out set: every file whose position in a seeded shuffle falls in the fraction
        order = np.random.default_rng(12345).permutation(len(files))
        n_val = max(1, int(round(len(files) * data.val_fraction)))
        if n_val >= len(files):
            raise UserError(f"'{data.root}' has {len(files)} image(s): too few to hold out a validation set; "
                            "add images or set data.val_root")
        held, kept = sorted(order[:n_val]), sorted(order[n_val:])

        def pick(xs, idx):
            return None if xs is None else [xs[i] for i in idx]
        val_files, val_labels, val_maps = pick(files, held), pick(labels, held), pick(maps, held)
        files, labels, maps = pick(files, kept), pick(labels, kept), pick(maps, kept)
    common = dict(class_names=classes, condition=cond, view=view)
    return (FolderDataset(files, size, ch, augment, seed, labels, maps=maps, **common),
            FolderDataset(val_files, size, ch, False, seed, val_labels, maps=val_maps, **common))


SPEC = DatasetSpec("folder", build, lambda data, seed: {**root_settings(data, seed), "val_fraction": data.val_fraction,
                                                         "val_root": data.val_root and os.path.abspath(data.val_root)},
                   map_root=True, subfolder_labels=True)
