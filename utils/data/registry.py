"""The built-in datasets, one line each, and what the rest of the project asks of them.

Every dataset yields (image, label): image (C, H, W) float in [-1, 1] with the configured channels and size,
label a long (-1 where there is none), and names its classes (`class_names`, None without labels) and the files
it was read from (`sources`, for the token cache's key). With data.condition set, it also makes a condition map
per image (utils/data/conditions.py), which its "condition" view yields instead of the image. Training
augmentation draws from a generator seeded by (seed, epoch, index), so it is the same whatever the number of
workers and across an exact resume.

Adding a dataset: a module that makes a `DatasetSpec` (utils/data/spec.py), and its line below.
"""
import os

import torch

from utils.core.errors import UserError
from utils.data import cifar10, folder, mnist, scenes, shapes
from utils.data.conditions import Condition, palette
from utils.data.spec import DatasetSpec

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    shapes.SPEC,
    scenes.SPEC,
    mnist.MNIST,
    mnist.FASHION_MNIST,
    cifar10.SPEC,
    folder.SPEC,
)}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown data.dataset '{name}'; there are: {', '.join(DATASETS)}")
    return DATASETS[name]


def class_names_of(name: str) -> tuple[str, ...]:
    """The fixed class names of a dataset (none for a folder, whose classes are its subfolders)."""
    return DATASETS[name].class_names or () if name in DATASETS else ()


def layout_palette(name: str, classes: int) -> torch.Tensor:
    """(classes, 3) uint8: the colours of a segmentation layout's classes, the dataset's own or the default."""
    own = DATASETS[name].mask_palette if name in DATASETS else None
    return torch.tensor(own, dtype=torch.uint8) if own else (palette(classes) * 255).round().to(torch.uint8)


def build_datasets(data, seed: int, augment: bool = True, view: str = None):
    """(train, val) datasets for a checked data section `data` (DataConfig.check); augment=False gives the training
    split without random crops or flips (stage 2 encodes it once); view: "image" or "condition" (default:
    data.tokenize). With data.crop_size, the training split yields random crops of that size (image and map alike)
    of its images brought to data.image_size."""
    cond = None if data.condition == "none" else Condition(data.condition, data.condition_classes,
                                                              data.condition_factor)
    train, val = dataset_spec(data.dataset).build(data, seed, augment, cond, view or data.tokenize)
    if augment and getattr(data, "crop_size", None):
        train.crop_to(data.crop_size, seed)
    return train, val


def cache_settings(data, seed: int) -> dict:
    """Every setting that changes a dataset's images or labels: the token cache's key (transformer/tokens.py)."""
    settings = {"dataset": data.dataset, "image_size": data.image_size, "channels": data.channels,
                "labels": data.labels}
    if data.condition != "none":
        settings.update(condition=data.condition, condition_root=data.condition_root and
                        os.path.abspath(data.condition_root), condition_factor=data.condition_factor,
                        condition_classes=data.condition_classes)
    return {**settings, **dataset_spec(data.dataset).key_settings(data, seed)}
