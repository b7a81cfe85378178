"""What the project knows of a dataset, in one record: a built-in dataset is a module that makes one of these and
one line in utils/data/registry.py that lists it."""
import os
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class DatasetSpec:
    """name: the data.dataset value. build(data, seed, augment, condition, view) -> (train, val) datasets of
    (image, label) (utils/data/images.py: ImageDataset). key_settings(data, seed) -> the settings that define its
    images besides size, channels, labels and condition (the token cache's key)."""
    name: str
    build: Callable
    key_settings: Callable
    class_names: Optional[tuple[str, ...]] = None  # fixed classes; None: none, or read from the files (folder)
    mask_classes: int = 0           # classes of the segmentation masks it makes itself, background included; 0: none
    mask_names: tuple[str, ...] = ()  # their names, class 0 first
    mask_palette: Optional[tuple] = None  # their colours (RGB, 0-255) in pictures and in painted layouts; None: the
                                    # default palette (utils/data/conditions.py)
    map_root: bool = False          # reads condition maps (segmentation, paired) from data.condition_root
    subfolder_labels: bool = False  # takes data.labels=subfolders
    judge: str = ""                 # the classifier recipe that judges samples (utils/eval/classifier.py): "real"
                                    # (its own train and test splits), "rendered" (judge_data), "" (none)
    judge_data: Optional[Callable] = None  # "rendered": (size, n, n_held_out) -> ((x, y), (held-out x, y), names)
    segmenter: str = ""             # the segmenter that judges samples drawn for a mask (utils/eval/segmenter.py):
                                    # "objects" (an object's region), "layouts" (every pixel's class), "" (none)
    segmenter_data: Optional[Callable] = None  # (size, n, n_held_out) -> ((x, masks), (held-out x, masks)), masks
                                    # bool (objects) or class indices (layouts)


def root_settings(data, seed: int) -> dict:
    """The key settings of a dataset read from files under data.root."""
    return {"root": os.path.abspath(data.root)}
