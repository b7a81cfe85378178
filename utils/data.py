"""Datasets for both stages: the built-in `shapes` set, MNIST-like IDX files, CIFAR-10 batches, image folders.

Every dataset yields (image, label): image (C, H, W) float in [-1, 1] with the configured channels and size,
label a long (-1 where there is none), and names its classes (`class_names`, None without labels) and the files
it was read from (`sources`, for the token cache's key). Training augmentation draws from a generator seeded by
(seed, epoch, index), so it is the same whatever the number of workers and across an exact resume.
"""
import logging
import math
import os
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from utils.datafiles import load_cifar10_split, load_idx_split
from utils.errors import UserError
from utils.shapes import SHAPE_CLASSES, render_shapes

CLASS_NAMES = {
    "shapes": SHAPE_CLASSES,
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def to_tensor(img: np.ndarray, channels: int) -> torch.Tensor:
    """img: (H, W) or (H, W, 3) uint8 -> (channels, H, W) float in [-1, 1]."""
    if img.ndim == 2:
        img = img[:, :, None]
    if channels == 1 and img.shape[2] == 3:  # ITU-R 601 luma, as PIL's convert("L")
        img = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
    elif channels == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)  # (C, H, W)
    return t / 127.5 - 1.0


def fit_size(img: np.ndarray, size: int) -> np.ndarray:
    """A square uint8 image to size x size: symmetric zero padding when smaller (MNIST 28 -> 32), else resize."""
    h = img.shape[0]
    if h == size:
        return img
    if h < size and (size - h) % 2 == 0 and size - h <= h // 2:
        p = (size - h) // 2
        pad = ((p, p), (p, p)) + (((0, 0),) if img.ndim == 3 else ())
        return np.pad(img, pad)
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))


class ArrayDataset(Dataset):
    """In-memory uint8 images (N, H, W[, C]) with labels; optional random horizontal flip for training."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int, channels: int,
                 flip: bool = False, seed: int = 0, class_names=None, sources=()):
        self.images, self.labels = images, torch.as_tensor(labels, dtype=torch.long)
        self.size, self.channels, self.flip, self.seed, self.epoch = size, channels, flip, seed, 0
        self.class_names, self.sources = class_names, list(sources)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int):
        x = to_tensor(fit_size(self.images[i], self.size), self.channels)
        if self.flip and torch.rand((), generator=_item_generator(self.seed, self.epoch, i)) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


def _item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2 ** 63))


# ----------------------------------------------------------------------------- image folders

def list_images(root: str) -> list[str]:
    """The readable image files under `root`, sorted; unreadable ones are skipped with one warning."""
    if not os.path.isdir(root):
        raise UserError(f"no folder at '{root}'")
    files = []
    for d, _, names in os.walk(root, followlinks=True):
        files += [os.path.join(d, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise UserError(f"no image files in '{root}' (looked for {', '.join(IMAGE_EXTENSIONS)})")
    good = [f for f in sorted(files) if _readable(f)]
    if len(good) < len(files):
        warnings.warn(f"skipped {len(files) - len(good)} unreadable image file(s) of {len(files)} in '{root}'")
    if not good:
        raise UserError(f"no readable image in '{root}' ({len(files)} file(s) with image extensions)")
    return good


def _readable(path: str) -> bool:
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


class FolderDataset(Dataset):
    """Images under a folder tree: resized on the shorter side, then centre-cropped (val) or randomly
    cropped and flipped (train). `files` come from list_images, which has dropped unreadable ones; `labels`
    (one class index per file) from subfolder_labels."""

    def __init__(self, files: list[str], size: int, channels: int, train: bool, seed: int = 0,
                 labels=None, class_names=None):
        self.files, self.size, self.channels, self.train, self.seed, self.epoch = files, size, channels, train, seed, 0
        self.labels = torch.as_tensor(labels if labels is not None else [-1] * len(files), dtype=torch.long)
        self.class_names, self.sources = class_names, files

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, i: int) -> tuple[Image.Image, int]:
        """The image at i, or when it cannot be decoded the next one that can, and the index it came from."""
        for j in range(len(self.files)):  # a file that passed verify() may still be truncated: take the next
            k = (i + j) % len(self.files)
            try:
                with Image.open(self.files[k]) as im:
                    return im.convert("L" if self.channels == 1 else "RGB"), k
            except Exception:
                warnings.warn(f"skipping unreadable image '{self.files[k]}'")
        raise UserError("no image in the dataset could be decoded")

    def __getitem__(self, i: int):
        img, k = self._load(i)
        w, h = img.size
        s = self.size / min(w, h)
        img = img.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BICUBIC)
        w, h = img.size
        g = _item_generator(self.seed, self.epoch, i) if self.train else None
        if self.train:
            left = int(torch.randint(0, w - self.size + 1, (), generator=g))
            top = int(torch.randint(0, h - self.size + 1, (), generator=g))
        else:
            left, top = (w - self.size) // 2, (h - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        x = to_tensor(np.asarray(img), self.channels)
        if self.train and torch.rand((), generator=g) < 0.5:
            x = x.flip(-1)
        return x, self.labels[k]


# ----------------------------------------------------------------------------- entry point and sampler

def build_datasets(data, seed: int, augment: bool = True):
    """(train, val) datasets for a DataConfig-like object `data`; augment=False gives the training
    split without random crops or flips (stage 2 encodes it once)."""
    kind, size, ch = data.dataset, data.image_size, data.channels
    if kind != "folder" and data.labels != "none":
        raise UserError(f"data.labels={data.labels} is for data.dataset=folder; {kind} has its own labels")
    if kind == "shapes":
        if size < 8:
            raise UserError(f"data.image_size={size} is too small for shapes (at least 8)")
        tr = render_shapes(data.num_train, size, seed)
        va = render_shapes(data.num_val, size, seed + 7_919)  # a separate stream: a fixed, disjoint split
        return (ArrayDataset(*tr, size, ch, class_names=SHAPE_CLASSES),
                ArrayDataset(*va, size, ch, class_names=SHAPE_CLASSES))
    if kind in ("mnist", "fashion_mnist"):
        out = []
        for split in ("train", "val"):
            images, labels, paths = load_idx_split(kind, data.root, split, data.download)
            out.append(ArrayDataset(images, labels, size, ch, class_names=CLASS_NAMES[kind], sources=paths))
        return tuple(out)
    if kind == "cifar10":
        names = CLASS_NAMES["cifar10"]
        images, labels, paths = load_cifar10_split(data.root, "train", data.download)
        tr = ArrayDataset(images, labels, size, ch, flip=augment, seed=seed, class_names=names, sources=paths)
        images, labels, paths = load_cifar10_split(data.root, "val", data.download)
        return tr, ArrayDataset(images, labels, size, ch, class_names=names, sources=paths)
    if kind == "folder":
        files = list_images(data.root)
        classes, labels, val_labels = None, None, None
        if data.labels == "subfolders":
            classes, files, labels = subfolder_labels(data.root, files)
            logging.getLogger("vqgan").info(f"{len(classes)} classes from the subfolders of '{data.root}': "
                                            + ", ".join(f"{i} {c}" for i, c in enumerate(classes)))
        if data.val_root:
            val_files = list_images(data.val_root)
            if classes is not None:
                _, val_files, val_labels = subfolder_labels(data.val_root, val_files, classes)
        else:
            # a deterministic held-out set: every file whose position in a seeded shuffle falls in the fraction
            order = np.random.default_rng(12345).permutation(len(files))
            n_val = max(1, int(round(len(files) * data.val_fraction)))
            if n_val >= len(files):
                raise UserError(f"'{data.root}' has {len(files)} image(s): too few to hold out a validation set; "
                                "add images or set data.val_root")
            held, kept = sorted(order[:n_val]), sorted(order[n_val:])
            val_files, files = [files[i] for i in held], [files[i] for i in kept]
            if labels is not None:
                val_labels, labels = [labels[i] for i in held], [labels[i] for i in kept]
        return (FolderDataset(files, size, ch, augment, seed, labels, classes),
                FolderDataset(val_files, size, ch, False, seed, val_labels, classes))
    raise UserError(f"unknown data.dataset '{kind}'")


class ResumableSampler(Sampler):
    """A seeded per-epoch permutation, sharded across ranks, that can start mid-epoch.

    Each rank gets len // world indices per epoch (the same count everywhere, a few dropped), and the
    order depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = n // world if shuffle else math.ceil((n - rank) / world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Start `epoch` at its `start`-th index of this rank's share."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.per_rank * self.world]
        return perm[self.rank::self.world].tolist()

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start

