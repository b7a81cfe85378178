"""Readers of the standard dataset files: MNIST-like IDX files (gzipped or not) and CIFAR-10 python batches, with
torchvision's download as the fallback when asked for."""
import gzip
import math
import os
import pickle

import numpy as np

from utils.errors import UserError

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


# ----------------------------------------------------------------------------- CIFAR-10 python batches

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10_split(root: str, split: str, download: bool):
    """(images (N, 32, 32, 3) uint8, labels (N,), the batch files read)."""
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
    return np.concatenate(images), np.asarray(labels), [os.path.join(folder, n) for n in names]
