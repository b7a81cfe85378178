"""Datasets for both stages: the built-in `shapes` set, MNIST-like IDX files, CIFAR-10 batches, image folders.

Every dataset yields (image, label): image (C, H, W) float in [-1, 1] with the configured channels and size,
label a long (-1 where there is none). Training augmentation draws from a generator seeded by
(seed, epoch, index), so it is the same whatever the number of workers and across an exact resume.
"""
import gzip
import math
import os
import pickle
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from utils.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
# Five shapes that stay distinct after 4x downsampling at 32x32: a hexagon, for one, differs from a circle by
# about one pixel at this size and reconstructs as one, so the set has a ring instead.
SHAPE_CLASSES = ("circle", "square", "triangle", "ring", "cross")
# Ten named colours for shapes and backgrounds: few enough that the codes of a small codebook go to geometry rather
# than to shades, distinct enough that every shape stands out from its background.
SHAPE_PALETTE = np.array([(230, 40, 40), (245, 150, 30), (240, 220, 40), (50, 180, 70), (40, 200, 220),
                          (40, 80, 220), (150, 60, 200), (240, 120, 190), (245, 245, 245), (30, 30, 40)], np.float32)


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


# ----------------------------------------------------------------------------- shapes

def render_shapes(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n RGB images (n, size, size, 3) uint8 of one shape each in a palette colour on a solid or gradient background,
    with hard (aliased) edges, random size, position, quarter-turn and colours; labels index SHAPE_CLASSES."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((n, size, size, 3), np.uint8)
    labels = rng.integers(0, len(SHAPE_CLASSES), n)
    for i in range(n):
        i0, i1 = rng.choice(len(SHAPE_PALETTE), 2, replace=False)
        c0, c1 = SHAPE_PALETTE[i0], SHAPE_PALETTE[i1]
        if rng.random() < 0.5:  # linear gradient in a random direction
            a = rng.uniform(0, 2 * np.pi)
            t = ((xx * np.cos(a) + yy * np.sin(a)) / size * 0.7 + 0.5).clip(0, 1)[..., None]
            bg = c0 * (1 - t) + c1 * t
        else:
            bg = np.broadcast_to(c0, (size, size, 3))
        mean = bg.reshape(-1, 3).mean(0)  # a shape colour that stands out from the whole background
        contrast = np.abs(SHAPE_PALETTE - mean).sum(1) > 120
        contrast[[i0, i1]] = False  # nor equal to either end of a gradient
        fg = SHAPE_PALETTE[rng.choice(np.flatnonzero(contrast))]
        # r: the shape's half-extent (radius of circle and ring, arm of the cross, half a leg of the triangle, 4/3 of
        # the square's half-side): even the smallest shape spans about 4 tokens at f=4
        r = rng.uniform(0.25, 0.45) * size
        cx, cy = rng.uniform(r, size - r, 2)
        rot = rng.integers(4) * np.pi / 2  # quarter turns: edges stay aligned with the 4x4 token patches
        dx, dy = xx - cx, yy - cy
        u, v = dx * np.cos(rot) + dy * np.sin(rot), -dx * np.sin(rot) + dy * np.cos(rot)
        kind = SHAPE_CLASSES[labels[i]]
        if kind == "circle":
            mask = dx ** 2 + dy ** 2 <= r ** 2
        elif kind == "square":
            mask = (np.abs(u) <= r * 0.75) & (np.abs(v) <= r * 0.75)
        elif kind == "cross":
            w = r * 0.3
            mask = ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
        elif kind == "ring":
            rho = np.hypot(dx, dy)
            mask = (rho <= r) & (rho >= r * 0.5)
        else:  # right isosceles triangle, legs 2r along the axes (about the square's area), hypotenuse through (cx, cy)
            mask = (u >= -r) & (v >= -r) & (u + v <= 0)
        img = np.where(mask[..., None], fg, bg)
        images[i] = img.clip(0, 255).astype(np.uint8)
    return images, labels


class ArrayDataset(Dataset):
    """In-memory uint8 images (N, H, W[, C]) with labels; optional random horizontal flip for training."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int, channels: int,
                 flip: bool = False, seed: int = 0, class_names=None):
        self.images, self.labels = images, torch.as_tensor(labels, dtype=torch.long)
        self.size, self.channels, self.flip, self.seed, self.epoch = size, channels, flip, seed, 0
        self.class_names = class_names

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


# ----------------------------------------------------------------------------- MNIST-like IDX files

_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_TV_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"'{path}' is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != math.prod(shape):
        raise UserError(f"'{path}' is truncated: {arr.size} bytes for shape {shape}")
    return arr.reshape(shape).copy()  # writable, so that torch can wrap it


def _find_idx(root: str, name: str, dataset: str):
    dirs = [root, os.path.join(root, "raw"), os.path.join(root, _TV_FOLDER[dataset], "raw")]
    for d in dirs:
        for fn in (name, name + ".gz"):
            if os.path.isfile(os.path.join(d, fn)):
                return os.path.join(d, fn)
    return None


def load_idx_split(dataset: str, root: str, split: str, download: bool):
    paths = [_find_idx(root, n, dataset) for n in _IDX[split]]
    if None in paths and download:
        import torchvision.datasets as tvd
        cls = tvd.MNIST if dataset == "mnist" else tvd.FashionMNIST
        try:
            cls(root, train=(split == "train"), download=True)
        except Exception as e:
            raise UserError(f"could not download {dataset} into '{root}' ({type(e).__name__}: {e}); "
                            "put the four IDX files there yourself") from None
        paths = [_find_idx(root, n, dataset) for n in _IDX[split]]
    if None in paths:
        where = ", ".join([root, os.path.join(root, "raw"), os.path.join(root, _TV_FOLDER[dataset], "raw")])
        hint = ("apt-get install dataset-fashion-mnist, then data.root=/usr/share/datasets/fashion-mnist; "
                if dataset == "fashion_mnist" else "")
        raise UserError(f"{dataset}: no {_IDX[split][0]}[.gz] / {_IDX[split][1]}[.gz] in {where}; "
                        f"{hint}or set data.download=true (needs internet)")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if len(images) != len(labels):
        raise UserError(f"{dataset}: {len(images)} images but {len(labels)} labels in '{os.path.dirname(paths[0])}'")
    return images, labels


# ----------------------------------------------------------------------------- CIFAR-10 python batches

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10_split(root: str, split: str, download: bool):
    folder = next((d for d in (os.path.join(root, "cifar-10-batches-py"), root)
                   if os.path.isfile(os.path.join(d, "test_batch"))), None)
    if folder is None and download:
        import torchvision.datasets as tvd
        try:
            tvd.CIFAR10(root, train=True, download=True)
        except Exception as e:
            raise UserError(f"could not download cifar10 into '{root}' ({type(e).__name__}: {e})") from None
        folder = os.path.join(root, "cifar-10-batches-py")
    if folder is None:
        raise UserError(f"cifar10: no cifar-10-batches-py/test_batch in '{root}' (nor directly in it); "
                        "unpack cifar-10-python.tar.gz there or set data.download=true (needs internet)")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for n in names:
        p = os.path.join(folder, n)
        if not os.path.isfile(p):
            raise UserError(f"cifar10: missing '{p}'")
        with open(p, "rb") as f:
            d = pickle.load(f, encoding="bytes")  # the official distribution format
        images.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(d[b"labels"])
    return np.concatenate(images), np.asarray(labels)


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


class FolderDataset(Dataset):
    """Images under a folder tree: resized on the shorter side, then centre-cropped (val) or randomly
    cropped and flipped (train). `files` come from list_images, which has dropped unreadable ones."""

    def __init__(self, files: list[str], size: int, channels: int, train: bool, seed: int = 0):
        self.files, self.size, self.channels, self.train, self.seed, self.epoch = files, size, channels, train, seed, 0
        self.class_names = None

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, i: int) -> Image.Image:
        for j in range(len(self.files)):  # a file that passed verify() may still be truncated: take the next
            path = self.files[(i + j) % len(self.files)]
            try:
                with Image.open(path) as im:
                    return im.convert("L" if self.channels == 1 else "RGB")
            except Exception:
                warnings.warn(f"skipping unreadable image '{path}'")
        raise UserError("no image in the dataset could be decoded")

    def __getitem__(self, i: int):
        img = self._load(i)
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
        return x, torch.tensor(-1)


# ----------------------------------------------------------------------------- entry point and sampler

def build_datasets(data, seed: int, augment: bool = True):
    """(train, val) datasets for a DataConfig-like object `data`; augment=False gives the training
    split without random crops or flips (stage 2 encodes it once)."""
    kind, size, ch = data.dataset, data.image_size, data.channels
    if kind == "shapes":
        if size < 8:
            raise UserError(f"data.image_size={size} is too small for shapes (at least 8)")
        tr = render_shapes(data.num_train, size, seed)
        va = render_shapes(data.num_val, size, seed + 7_919)  # a separate stream: a fixed, disjoint split
        return (ArrayDataset(*tr, size, ch, class_names=SHAPE_CLASSES),
                ArrayDataset(*va, size, ch, class_names=SHAPE_CLASSES))
    if kind in ("mnist", "fashion_mnist"):
        return tuple(ArrayDataset(*load_idx_split(kind, data.root, split, data.download), size, ch)
                     for split in ("train", "val"))
    if kind == "cifar10":
        tr = ArrayDataset(*load_cifar10_split(data.root, "train", data.download), size, ch, flip=augment, seed=seed,
                          class_names=CIFAR_CLASSES)
        va = ArrayDataset(*load_cifar10_split(data.root, "val", data.download), size, ch, class_names=CIFAR_CLASSES)
        return tr, va
    if kind == "folder":
        files = list_images(data.root)
        if data.val_root:
            val_files = list_images(data.val_root)
        else:
            # a deterministic held-out set: every file whose position in a seeded shuffle falls in the fraction
            order = np.random.default_rng(12345).permutation(len(files))
            n_val = max(1, int(round(len(files) * data.val_fraction)))
            if n_val >= len(files):
                raise UserError(f"'{data.root}' has {len(files)} image(s): too few to hold out a validation set; "
                                "add images or set data.val_root")
            val_files = [files[i] for i in sorted(order[:n_val])]
            files = [files[i] for i in sorted(order[n_val:])]
        return FolderDataset(files, size, ch, augment, seed), FolderDataset(val_files, size, ch, False, seed)
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

