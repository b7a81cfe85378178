"""What the datasets share: arrays to tensors, fitting to a size, the seeded generator of training augmentation, the
base class of every dataset (views of images and their condition maps), and in-memory arrays as a dataset."""
import copy

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.core.errors import UserError

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


def fit_size(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """A square uint8 image to size x size: symmetric zero padding when smaller (MNIST 28 -> 32), else resize
    (bicubic, or nearest for class maps)."""
    h = img.shape[0]
    if h == size:
        return img
    if h < size and (size - h) % 2 == 0 and size - h <= h // 2:
        p = (size - h) // 2
        pad = ((p, p), (p, p)) + (((0, 0),) if img.ndim == 3 else ())
        return np.pad(img, pad)
    return np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST if nearest else Image.BICUBIC))


def item_generator(seed: int, epoch: int, index: int, stream: int = 0) -> torch.Generator:
    """The generator of one item's augmentation: the same for (seed, epoch, index) whatever the workers or resume;
    `stream` 1 for the crops, independent of stream 0 (the flips and a folder's crops)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + index + stream * 7_919_000_011)
                                         % (2 ** 63))


class ImageDataset(Dataset):
    """What every dataset has: an epoch (for seeded augmentation), class names and source files, and a view: each
    item is (image, label), or with view "condition" (its condition map, label), both cropped and flipped alike."""

    def __init__(self, class_names=None, sources=(), condition=None, view: str = "image"):
        self.class_names, self.sources, self.condition, self.view, self.epoch = class_names, list(sources), \
            condition, view, 0
        self.crop, self.crop_seed = None, 0
        if view == "condition" and condition is None:
            raise ValueError("a condition view needs a condition")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def with_view(self, view: str) -> "ImageDataset":
        """The same items, seen as images or as their condition maps."""
        other = copy.copy(self)
        other.view = view
        return other

    def crop_to(self, size: int, seed: int) -> None:
        """Items become random size x size crops (image and map alike), seeded by (seed, epoch, index)."""
        self.crop, self.crop_seed = size, seed

    def item(self, x: torch.Tensor, raw, label: torch.Tensor, index: int):
        """(the image or its condition map, label): x (C, H, W) and raw (its map as the dataset read it, or None) as
        augmented, cropped alike when crop_to asked for crops."""
        if self.crop:
            g = item_generator(self.crop_seed, self.epoch, index, stream=1)
            top, left = (int(torch.randint(0, n - self.crop + 1, (), generator=g)) for n in x.shape[-2:])
            x = x[..., top:top + self.crop, left:left + self.crop]
            raw = None if raw is None else raw[..., top:top + self.crop, left:left + self.crop]
        return (self.condition.of(x, raw) if self.view == "condition" else x), label


def read_image(path: str, channels: int, option: str) -> torch.Tensor:
    """A user's image file -> (1, channels, H, W) in [-1, 1] (RGB and grayscale converted as the datasets do);
    `option` names the command-line option in errors."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except FileNotFoundError:
        raise UserError(f"{option}: no file at '{path}'") from None
    except Exception as e:
        raise UserError(f"{option}: '{path}' is not a readable image ({type(e).__name__})") from None
    return to_tensor(arr, channels)[None]


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
        return self.item(x, raw, self.labels[i], i)


def stack(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of a dataset: (images (N, C, H, W), labels (N,))."""
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.as_tensor(ds.labels).long()
