"""Datasets for both stages: the built-in `shapes` set, MNIST-like IDX files, CIFAR-10 batches, image folders.

Every dataset yields (image, label): image (C, H, W) float in [-1, 1] with the configured channels and size,
label a long (-1 where there is none), and names its classes (`class_names`, None without labels) and the files
it was read from (`sources`, for the token cache's key). With data.condition set, it also makes a condition map
per image (utils/conditions.py), which its "condition" view yields instead of the image. Training augmentation
draws from a generator seeded by (seed, epoch, index), so it is the same whatever the number of workers and
across an exact resume.
"""
import logging
import math

import numpy as np
import torch
from torch.utils.data import Sampler

from utils.conditions import Condition
from utils.datafiles import load_cifar10_split, load_idx_split
from utils.errors import UserError
from utils.folder import FolderDataset, list_images, paired_maps, subfolder_labels
from utils.images import ImageDataset, fit_size, item_generator, to_tensor
from utils.shapes import SHAPE_CLASSES, render_shapes

CLASS_NAMES = {
    "shapes": SHAPE_CLASSES,
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


class ArrayDataset(ImageDataset):
    """In-memory uint8 images (N, H, W[, C]) with labels; optional random horizontal flip for training; `masks`
    (N, H, W) uint8 class maps for a segmentation condition, flipped with their images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int, channels: int, flip: bool = False,
                 seed: int = 0, class_names=None, sources=(), masks=None, condition=None, view: str = "image"):
        super().__init__(class_names, sources, condition, view)
        self.images, self.labels, self.masks = images, torch.as_tensor(labels, dtype=torch.long), masks
        self.size, self.channels, self.flip, self.seed = size, channels, flip, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = to_tensor(fit_size(self.images[i], self.size), self.channels)
        raw = None if self.masks is None else torch.from_numpy(fit_size(self.masks[i], self.size, nearest=True)).long()
        if self.flip and torch.rand((), generator=item_generator(self.seed, self.epoch, i)) < 0.5:
            x, raw = x.flip(-1), (None if raw is None else raw.flip(-1))
        return self.item(x, raw, self.labels[i])


def condition_of(data) -> Condition:
    """The Condition the config asks for (None for data.condition=none), after checking that the dataset can make
    it: masks come from the shapes set or a folder's data.condition_root, paired maps from data.condition_root."""
    kind = data.condition
    if kind == "none":
        if data.tokenize == "condition":
            raise UserError("data.tokenize=condition needs a data.condition (segmentation, edges, lowres or paired)")
        return None
    if kind in ("segmentation", "paired") and data.dataset != "folder" and not (kind == "segmentation" and
                                                                                data.dataset == "shapes"):
        raise UserError(f"data.condition={kind} needs maps: " + ("the shapes set has masks, a folder dataset takes "
                        "them from data.condition_root" if kind == "segmentation" else "a folder dataset takes them "
                        "from data.condition_root"))
    if data.dataset == "folder" and kind in ("segmentation", "paired") and not data.condition_root:
        raise UserError(f"data.condition={kind} with a folder dataset needs data.condition_root: the folder of maps "
                        "with the same relative names as the images")
    classes = data.condition_classes
    if kind == "segmentation":
        if data.dataset == "shapes":
            classes = classes or len(SHAPE_CLASSES) + 1
            if classes != len(SHAPE_CLASSES) + 1:
                raise UserError(f"data.condition_classes={classes}, but the shapes set's masks have "
                                f"{len(SHAPE_CLASSES) + 1} classes (background and one per shape)")
        elif classes < 2:
            raise UserError("data.condition=segmentation needs data.condition_classes: the number of classes of the "
                            "masks, background included (at least 2)")
    if kind == "lowres" and data.image_size % data.condition_factor:
        raise UserError(f"data.image_size={data.image_size} is not a multiple of data.condition_factor="
                        f"{data.condition_factor}")
    return Condition(kind, classes, data.condition_factor)


def build_datasets(data, seed: int, augment: bool = True, view: str = None):
    """(train, val) datasets for a DataConfig-like object `data`; augment=False gives the training split without
    random crops or flips (stage 2 encodes it once); view: "image" or "condition" (default: data.tokenize)."""
    kind, size, ch = data.dataset, data.image_size, data.channels
    cond = condition_of(data)
    view = view or data.tokenize
    if kind != "folder" and data.labels != "none":
        raise UserError(f"data.labels={data.labels} is for data.dataset=folder; {kind} has its own labels")
    common = dict(condition=cond, view=view)
    if kind == "shapes":
        if size < 8:
            raise UserError(f"data.image_size={size} is too small for shapes (at least 8)")
        seg = cond is not None and cond.kind == "segmentation"
        sets = []
        for n, s in ((data.num_train, seed), (data.num_val, seed + 7_919)):  # a separate stream: a fixed split
            images, labels, masks = render_shapes(n, size, s, with_masks=True)
            masks = (masks * (labels[:, None, None] + 1)).astype(np.uint8) if seg else None  # 0 background
            sets.append(ArrayDataset(images, labels, size, ch, class_names=SHAPE_CLASSES, masks=masks, **common))
        return tuple(sets)
    if kind in ("mnist", "fashion_mnist"):
        out = []
        for split in ("train", "val"):
            images, labels, paths = load_idx_split(kind, data.root, split, data.download)
            out.append(ArrayDataset(images, labels, size, ch, class_names=CLASS_NAMES[kind], sources=paths, **common))
        return tuple(out)
    if kind == "cifar10":
        names = CLASS_NAMES["cifar10"]
        images, labels, paths = load_cifar10_split(data.root, "train", data.download)
        tr = ArrayDataset(images, labels, size, ch, flip=augment, seed=seed, class_names=names, sources=paths, **common)
        images, labels, paths = load_cifar10_split(data.root, "val", data.download)
        return tr, ArrayDataset(images, labels, size, ch, class_names=names, sources=paths, **common)
    if kind == "folder":
        return folder_datasets(data, seed, augment, cond, view)
    raise UserError(f"unknown data.dataset '{kind}'")


def folder_datasets(data, seed: int, augment: bool, cond, view: str):
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

