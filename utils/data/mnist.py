"""MNIST and Fashion-MNIST: their IDX files (gzipped or not) under data.root, torchvision's download as the fallback
when asked for (data.download), and their class names."""
import gzip
import math
import os

import numpy as np

from utils.core.errors import UserError
from utils.data.images import ArrayDataset
from utils.data.spec import DatasetSpec, root_settings

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
    """(images (N, 28, 28) uint8, labels (N,), the two files read)."""
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
    return images, labels, paths


def _builder(name: str, class_names: tuple[str, ...]):
    def build(data, seed: int, augment: bool, condition, view: str):
        out = []
        for split in ("train", "val"):
            images, labels, paths = load_idx_split(name, data.root, split, data.download)
            out.append(ArrayDataset(images, labels, data.image_size, data.channels, class_names=class_names,
                                    sources=paths, condition=condition, view=view))
        return tuple(out)
    return build


MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
MNIST = DatasetSpec("mnist", _builder("mnist", MNIST_CLASSES), root_settings, class_names=MNIST_CLASSES, judge="real")
FASHION_MNIST = DatasetSpec("fashion_mnist", _builder("fashion_mnist", FASHION_CLASSES), root_settings,
                            class_names=FASHION_CLASSES, judge="real")
