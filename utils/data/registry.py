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

from utils.core.errors import UserError
from utils.data import cifar10, folder, mnist, shapes
from utils.data.conditions import Condition
from utils.data.spec import DatasetSpec

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    shapes.SPEC,
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


def build_datasets(data, seed: int, augment: bool = True, view: str = None):
    """(train, val) datasets for a checked data section `data` (DataConfig.check); augment=False gives the training
    split without random crops or flips (stage 2 encodes it once); view: "image" or "condition" (default:
    data.tokenize)."""
    cond = None if data.condition == "none" else Condition(data.condition, data.condition_classes,
                                                              data.condition_factor)
    return dataset_spec(data.dataset).build(data, seed, augment, cond, view or data.tokenize)


def cache_settings(data, seed: int) -> dict:
    """Every setting that changes a dataset's images or labels: the token cache's key (transformer/tokens.py)."""
    settings = {"dataset": data.dataset, "image_size": data.image_size, "channels": data.channels,
                "labels": data.labels}
    if data.condition != "none":
        settings.update(condition=data.condition, condition_root=data.condition_root and
                        os.path.abspath(data.condition_root), condition_factor=data.condition_factor,
                        condition_classes=data.condition_classes)
    return {**settings, **dataset_spec(data.dataset).key_settings(data, seed)}
