"""The built-in `scenes` set: large landscape-like canvases with their segmentation layouts, generated from run.seed.

Each canvas has a sky (a vertical gradient) above a wavy horizon, a band of hills along it, ground below, water
(a river across the canvas or a lake), and objects of the shapes classes (circles, squares, triangles) on the
ground and in the water, at least four per 128x128 pixels. Sizes are in pixels, not fractions of the canvas: a
256x256 canvas is a larger view of the same world, with its regions running on and more objects, which is what
a model trained on crops must continue. Every pixel's class is in the layout (`SCENE_CLASSES`, painted in
`SCENE_PALETTE` in pictures and in the RGB layouts generate.py --condition reads).
"""
import numpy as np
import torch

from utils.core.errors import UserError
from utils.data.images import ArrayDataset
from utils.data.spec import DatasetSpec

SCENE_CLASSES = ("sky", "hills", "ground", "water", "circle", "square", "triangle")
OBJECTS = SCENE_CLASSES[4:]
# the layout palette: one colour per class, far apart, for pictures of layouts and for painting them
SCENE_PALETTE = np.array([(135, 190, 235), (70, 110, 70), (150, 200, 90), (40, 80, 190), (230, 50, 50),
                          (245, 200, 40), (150, 60, 200)], np.uint8)
OBJECT_SIZE = (7.0, 15.0)        # half-extent of an object in pixels: 14 to 30 wide, at least 3 tokens at f=4
OBJECTS_PER_128 = (4, 7)         # objects per 128x128 pixels (scaled with the area)


def _smooth_noise(rng, n: int, scale: float, size: int) -> np.ndarray:
    """(size,) a smooth random curve: a sum of three sines of wavelengths about `scale` pixels and longer."""
    x = np.arange(size, dtype=np.float32)
    out = np.zeros(size, np.float32)
    for k in range(n):
        wavelength = scale * rng.uniform(0.6, 1.6) * (2 ** k)
        out += rng.uniform(0.3, 1.0) / (k + 1) * np.sin(2 * np.pi * x / wavelength + rng.uniform(0, 2 * np.pi))
    return out


def _between(rng, low: float, high: float) -> float:
    """A uniform draw from [low, high], or `high` where a small canvas leaves no room."""
    return rng.uniform(min(low, high), high)


def render_scene(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One canvas: (image (size, size, 3) uint8, layout (size, size) uint8 class indices)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    layout = np.zeros((size, size), np.uint8)  # sky
    horizon = rng.uniform(0.3, 0.45) * size
    ridge = horizon - 6 - np.abs(_smooth_noise(rng, 3, 48, size)) * rng.uniform(8, 16)  # hill tops
    ground_top = horizon + _smooth_noise(rng, 2, 64, size) * 3
    layout[yy >= ridge[None, :]] = 1
    layout[yy >= ground_top[None, :]] = 2
    if rng.random() < 0.6:  # a river across the canvas, from side to side
        centre = _between(rng, ground_top.max() + 14, size - 10) + _smooth_noise(rng, 2, 80, size) * 8
        width = rng.uniform(6, 12) + np.abs(_smooth_noise(rng, 1, 60, size)) * 4
        water = np.abs(yy - centre[None, :]) <= width[None, :]
    else:  # a lake
        cy, cx = _between(rng, ground_top.max() + 12, size - 8), rng.uniform(0, size)
        ry, rx = rng.uniform(8, 16), rng.uniform(20, 45)
        water = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    layout[water & (layout == 2)] = 3
    expected = rng.integers(*OBJECTS_PER_128, endpoint=True) * (size / 128) ** 2
    n = int(expected) + (int(rng.random() < expected % 1) if expected % 1 else 0)  # a small canvas: objects by chance
    low = float(ground_top.min())
    for _ in range(n):
        kind = int(rng.integers(len(OBJECTS)))
        r = rng.uniform(*OBJECT_SIZE)
        cy, cx = _between(rng, low + r * 0.5, size - r * 0.5), rng.uniform(r * 0.5, size - r * 0.5)
        dy, dx = yy - cy, xx - cx
        if kind == 0:
            mask = dx ** 2 + dy ** 2 <= r ** 2
        elif kind == 1:
            mask = (np.abs(dx) <= r * 0.8) & (np.abs(dy) <= r * 0.8)
        else:  # upright isosceles triangle: apex up, base at cy + r
            mask = (dy <= r) & (np.abs(dx) <= (dy + r) * 0.6)
        layout[mask] = 4 + kind
    return _paint(layout, rng, yy, xx), layout


def _paint(layout: np.ndarray, rng, yy, xx) -> np.ndarray:
    """The image of a layout: each region its own colour and a texture a small tokenizer can keep."""
    size = layout.shape[0]
    img = np.zeros((size, size, 3), np.float32)
    sky_top, sky_low = np.array([60, 120, 210], np.float32), np.array([190, 220, 245], np.float32)
    t = np.clip(yy / max(1.0, size * 0.45), 0, 1)[..., None]
    colours = {
        0: sky_top * (1 - t) + sky_low * t,
        1: np.array([70, 100, 75], np.float32) + 18 * np.sin(xx / 5.0 + yy / 7.0)[..., None],  # ridged hills
        2: np.array([110, 170, 70], np.float32) + 20 * (np.sin(xx / 3.0) * np.sin(yy / 3.0))[..., None],  # grass
        3: np.array([40, 90, 180], np.float32) + 30 * (np.sin(yy * 1.3 + np.sin(xx / 9.0)) > 0.6)[..., None],  # ripples
    }
    for k, c in colours.items():
        sel = layout == k
        img[sel] = np.broadcast_to(c, img.shape)[sel]
    for k, base in ((4, (215, 60, 40)), (5, (225, 190, 60)), (6, (140, 70, 160))):
        sel = layout == k
        img[sel] = np.array(base, np.float32) * rng.uniform(0.85, 1.1)
    return img.clip(0, 255).astype(np.uint8)


def render_scenes(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n canvases: images (n, size, size, 3) uint8 and layouts (n, size, size) uint8, the same for the same seed."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    layouts = np.empty((n, size, size), np.uint8)
    for i in range(n):
        images[i], layouts[i] = render_scene(size, rng)
    return images, layouts


def _tensors(images: np.ndarray, layouts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, 3) and (N, H, W) -> images (N, 3, H, W) in [-1, 1] and layouts (N, H, W) long."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, torch.from_numpy(layouts).long()


def segmenter_data(size: int, n: int, n_held_out: int):
    """The layout judge's data: ((n random 64x64 crops of canvases of `size`, their layouts), (n_held_out whole
    canvases, their layouts)), all from seeds no run uses."""
    crop, per_canvas = min(64, size), 16
    images, layouts = render_scenes(-(-n // per_canvas), size, 5_000_011)
    rng = np.random.default_rng(0)
    k = np.arange(n) // per_canvas
    top, left = rng.integers(0, size - crop + 1, (2, n))
    rows = (top[:, None] + np.arange(crop))[:, :, None]
    cols = (left[:, None] + np.arange(crop))[:, None, :]
    train = _tensors(images[k[:, None, None], rows, cols], layouts[k[:, None, None], rows, cols])
    return train, _tensors(*render_scenes(n_held_out, size, 6_000_007))


def build(data, seed: int, augment: bool, condition, view: str):
    """(train, val): data.num_train canvases from `seed`, data.num_val from another stream (held out), with their
    layouts as the maps of a segmentation condition."""
    if data.image_size < 32:
        raise UserError(f"data.image_size={data.image_size} is too small for scenes (at least 32)")
    seg = condition is not None and condition.kind == "segmentation"
    sets = []
    for n, s in ((data.num_train, seed), (data.num_val, seed + 7_919)):
        images, layouts = render_scenes(n, data.image_size, s)
        sets.append(ArrayDataset(images, np.full(n, -1), data.image_size, data.channels,
                                 masks=layouts if seg else None, condition=condition, view=view))
    return tuple(sets)


SPEC = DatasetSpec("scenes", build, lambda data, seed: {"num_train": data.num_train, "num_val": data.num_val,
                                                        "seed": seed, "version": 2},
                   mask_classes=len(SCENE_CLASSES), mask_names=SCENE_CLASSES,
                   mask_palette=tuple(map(tuple, SCENE_PALETTE.tolist())), segmenter="layouts",
                   segmenter_data=segmenter_data)
