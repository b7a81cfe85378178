"""The built-in `shapes` set: one shape per image, of random size, position, quarter-turn and palette colour, on a
solid or gradient background; the shape is the class label. Made for 32x32 images and 8x8 tokens. Generated from
run.seed (data.num_train, data.num_val), with masks for a segmentation condition, and the rendered images its judges
are trained on (utils/eval/classifier.py)."""
import numpy as np
import torch

from utils.core.errors import UserError
from utils.data.images import ArrayDataset, stack
from utils.data.spec import DatasetSpec

# Five shapes that stay distinct after 4x downsampling at 32x32: a hexagon, for one, differs from a circle by
# about one pixel at this size and reconstructs as one, so the set has a ring instead.
SHAPE_CLASSES = ("circle", "square", "triangle", "ring", "cross")
# Ten named colours for shapes and backgrounds: few enough that the codes of a small codebook go to geometry rather
# than to shades, distinct enough that every shape stands out from its background.
SHAPE_PALETTE = np.array([(230, 40, 40), (245, 150, 30), (240, 220, 40), (50, 180, 70), (40, 200, 220),
                          (40, 80, 220), (150, 60, 200), (240, 120, 190), (245, 245, 245), (30, 30, 40)], np.float32)


def render_shapes(n: int, size: int, seed: int, kinds=SHAPE_CLASSES, with_masks: bool = False):
    """n RGB images (n, size, size, 3) uint8 of one shape each in a palette colour on a solid or gradient background,
    with hard (aliased) edges, random size, position, quarter-turn and colours, and their labels (n,) indexing
    `kinds`; with_masks: also the shapes' pixels (n, size, size) bool. `kinds` may add "v", the triangle turned by
    45 degrees (a V or arrowhead: the evaluation classifier's decoy, never a class of the dataset)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    labels = rng.integers(0, len(kinds), n)
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
        kind = kinds[labels[i]]
        rot += np.pi / 4 if kind == "v" else 0.0
        dx, dy = xx - cx, yy - cy
        u, v = dx * np.cos(rot) + dy * np.sin(rot), -dx * np.sin(rot) + dy * np.cos(rot)
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
        else:  # right isosceles triangle ("triangle", "v"), legs 2r along the axes (about the square's area) before the
            # turn, hypotenuse through (cx, cy)
            mask = (u >= -r) & (v >= -r) & (u + v <= 0)
        img = np.where(mask[..., None], fg, bg)
        images[i] = img.clip(0, 255).astype(np.uint8)
        masks[i] = mask
    return (images, labels, masks) if with_masks else (images, labels)


def build(data, seed: int, augment: bool, condition, view: str):
    """(train, val): data.num_train and data.num_val images rendered from `seed` and from a separate stream (a fixed
    split), with their masks (0 background, 1 + the class on the shape) for a segmentation condition."""
    if data.image_size < 8:
        raise UserError(f"data.image_size={data.image_size} is too small for shapes (at least 8)")
    seg = condition is not None and condition.kind == "segmentation"
    sets = []
    for n, s in ((data.num_train, seed), (data.num_val, seed + 7_919)):
        images, labels, masks = render_shapes(n, data.image_size, s, with_masks=True)
        masks = (masks * (labels[:, None, None] + 1)).astype(np.uint8) if seg else None
        sets.append(ArrayDataset(images, labels, data.image_size, data.channels, class_names=SHAPE_CLASSES,
                                 masks=masks, condition=condition, view=view))
    return tuple(sets)


def judge_data(size: int, n: int, n_held_out: int):
    """((images, labels), (held-out images, labels), class names) of the shapes classifier, freshly rendered from
    seeds no dataset uses: the five shapes and the decoy "v", so that a V never passes for a triangle."""
    kinds = SHAPE_CLASSES + ("v",)
    tr = render_shapes(n, size, 1_000_003, kinds)
    va = render_shapes(n_held_out, size, 2_000_003, kinds)
    return stack(ArrayDataset(*tr, size, 3)), stack(ArrayDataset(*va, size, 3)), kinds


def segmenter_data(size: int, n: int, n_held_out: int):
    """((images, masks), (held-out images, masks)): rendered images and their shapes' pixels (bool)."""
    out = []
    for n, seed in ((n, 3_000_017), (n_held_out, 4_000_037)):
        images, _, masks = render_shapes(n, size, seed, with_masks=True)
        out.append((stack(ArrayDataset(images, np.zeros(len(images)), size, 3))[0], torch.from_numpy(masks)))
    return tuple(out)


SPEC = DatasetSpec("shapes", build, lambda data, seed: {"num_train": data.num_train, "num_val": data.num_val,
                                                        "seed": seed},
                   class_names=SHAPE_CLASSES, mask_classes=len(SHAPE_CLASSES) + 1,
                   mask_names=("background",) + SHAPE_CLASSES, judge="rendered",
                   judge_data=judge_data, segmenter="objects", segmenter_data=segmenter_data)
