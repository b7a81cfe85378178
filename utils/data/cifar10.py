"""CIFAR-10: its python batches under data.root (or torchvision's download when asked for), flipped at random for
training."""
import os
import pickle

import numpy as np

from utils.core.errors import UserError
from utils.data.images import ArrayDataset
from utils.data.spec import DatasetSpec, root_settings


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


def build(data, seed: int, augment: bool, condition, view: str):
    out = []
    for split in ("train", "val"):
        images, labels, paths = load_cifar10_split(data.root, split, data.download)
        out.append(ArrayDataset(images, labels, data.image_size, data.channels, flip=augment and split == "train",
                                seed=seed, class_names=CIFAR_CLASSES, sources=paths, condition=condition, view=view))
    return tuple(out)


SPEC = DatasetSpec("cifar10", build, root_settings, class_names=CIFAR_CLASSES)
