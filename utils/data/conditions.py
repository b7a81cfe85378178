"""Condition maps for conditional synthesis: what a conditional transformer is given, pixel by pixel, beside the
image it draws (data.condition):
- segmentation: a class index per pixel (0 background; 255 "ignore"), fed to its tokenizer as a one-hot map;
- edges: the image's edges by a fixed detector (edge_map), one channel;
- lowres: the image area-averaged over condition_factor x condition_factor blocks, repeated back to full size;
- paired: any map from a parallel folder (depth, pose, sketch), treated as an image.
Every map is a (C, H, W) float tensor in [-1, 1] at the image's size, so that its token grid matches the image's.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.core.errors import UserError
from utils.data.images import to_tensor

IGNORE = 255  # a class map's "no label" value: no class is set there, no loss is taken and no score counts it
CONDITION_FACTOR = 4  # a low-resolution condition's default downsampling factor (data.condition_factor)

KINDS = ("segmentation", "edges", "lowres", "paired")
EDGE_THRESHOLD = 0.25        # Sobel magnitude (luma in [0, 1]) above which a pixel is an edge
_LUMA = torch.tensor([0.299, 0.587, 0.114])
# colours for class maps in pictures: background dark grey, then distinct hues
PALETTE = torch.tensor([(40, 40, 40), (230, 60, 60), (60, 170, 60), (60, 90, 230), (240, 200, 40), (170, 70, 200),
                        (50, 200, 210), (240, 140, 40), (200, 200, 200), (130, 80, 40)]) / 255.0


def condition_channels(data) -> int:
    """Channels of the maps of data.condition, as the condition tokenizer sees them."""
    return {"segmentation": data.condition_classes, "edges": 1}.get(data.condition, data.channels)


def edge_map(x: torch.Tensor) -> torch.Tensor:
    """x: (C, H, W) image in [-1, 1] -> (1, H, W) in {-1, 1}: 1 where the Sobel gradient magnitude of the luma
    (ITU-R 601, in [0, 1]) exceeds EDGE_THRESHOLD, with replicated borders. The same fixed detector at training
    and at generation."""
    y = (x + 1) / 2
    y = (y * _LUMA.view(3, 1, 1)).sum(0, keepdim=True) if y.shape[0] == 3 else y  # (1, H, W)
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 4
    p = F.pad(y[None], (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(p, k.view(1, 1, 3, 3)), F.conv2d(p, k.t().reshape(1, 1, 3, 3))
    return torch.where(torch.hypot(gx, gy)[0] > EDGE_THRESHOLD, 1.0, -1.0)


def lowres_map(x: torch.Tensor, factor: int) -> torch.Tensor:
    """x: (C, H, W) -> (C, H, W): each factor x factor block replaced by its mean (area averaging)."""
    return upsample(downsample(x, factor), factor)


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(..., C, H, W) -> (..., C, H / factor, W / factor) by area averaging."""
    return F.avg_pool2d(x.reshape(-1, *x.shape[-3:]), factor).reshape(*x.shape[:-2], x.shape[-2] // factor,
                                                                        x.shape[-1] // factor)


def upsample(small: torch.Tensor, factor: int) -> torch.Tensor:
    """(..., C, h, w) -> (..., C, h * factor, w * factor), each pixel repeated (nearest): what the tokenizer of a
    low-resolution condition sees."""
    return small.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def one_hot(seg: torch.Tensor, classes: int) -> torch.Tensor:
    """seg: (H, W) long class indices (IGNORE: none) -> (classes, H, W) in {-1, 1}: 1 on the pixel's class."""
    valid = seg != IGNORE
    out = torch.full((classes, *seg.shape), -1.0)
    out.scatter_(0, torch.where(valid, seg, 0)[None], torch.where(valid, 1.0, -1.0)[None])
    return out


def class_targets(maps: torch.Tensor) -> torch.Tensor:
    """maps: (B, classes, H, W) one-hot in {-1, 1} -> (B, H, W) long class indices, IGNORE where no class is set."""
    return torch.where(maps.amax(1) > 0, maps.argmax(1), IGNORE)


def palette(n: int) -> torch.Tensor:
    """(n, 3) colours in [0, 1] for class maps: PALETTE, then hues spaced by the golden angle."""
    extra = []
    for k in range(len(PALETTE), n):
        h = (k * 0.618034) % 1.0
        extra.append([abs(h * 6 - 3) - 1, 2 - abs(h * 6 - 2), 2 - abs(h * 6 - 4)])
    return torch.cat([PALETTE, torch.tensor(extra).clamp(0.2, 0.9).reshape(-1, 3)])[:n]


def colorize(idx: torch.Tensor, classes: int, colours: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, H, W) class indices -> (B, 3, H, W) pictures in [0, 1], ignored pixels black; colours: (classes, 3) uint8,
    a dataset's own layout palette (default: palette(classes))."""
    pal = palette(classes) if colours is None else colours.float() / 255
    out = pal[torch.where(idx == IGNORE, 0, idx).clamp(0, classes - 1)].permute(0, 3, 1, 2)  # (B, 3, H, W)
    return torch.where((idx == IGNORE)[:, None], 0.0, out)


def as_picture(maps: torch.Tensor, kind: str, logits: bool = False, colours: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, C, H, W) condition maps in [-1, 1] (or, with logits, a segmentation tokenizer's class logits) ->
    (B, 1 or 3, H, W) pictures in [0, 1]; colours: a segmentation layout's palette (colorize)."""
    if kind == "segmentation":
        return colorize(maps.argmax(1) if logits else class_targets(maps), maps.shape[1], colours)
    return ((maps.float() + 1) / 2).clamp(0, 1)


@dataclass
class Condition:
    """The condition map a dataset makes beside each image: its kind, and the classes (segmentation) or factor
    (lowres)."""
    kind: str
    classes: int = 0
    factor: int = CONDITION_FACTOR

    def of(self, x: torch.Tensor, raw=None) -> torch.Tensor:
        """x: the image (C, H, W) in [-1, 1] as cropped and flipped; raw: its map from the dataset, cropped and
        flipped alike (a (H, W) long class map for segmentation, a (C, H, W) image for paired) -> the map."""
        if self.kind == "segmentation":
            return one_hot(raw, self.classes)
        if self.kind == "edges":
            return edge_map(x)
        if self.kind == "lowres":
            return lowres_map(x, self.factor)
        return raw


def layout_classes(rgb: torch.Tensor, colours: torch.Tensor, path: str) -> torch.Tensor:
    """rgb: (H, W, 3) uint8 a layout painted in `colours` ((classes, 3) uint8) -> (H, W) long class indices; a colour
    outside the palette is a UserError naming it, where it first stands and the palette."""
    match = (rgb[:, :, None, :] == colours[None, None]).all(-1)  # (H, W, classes)
    seg = match.int().argmax(-1)
    bad = ~match.any(-1)
    if bad.any():
        y, x = (int(v) for v in bad.nonzero()[0])
        listed = ", ".join(f"{k} {tuple(c)}" for k, c in enumerate(colours.tolist()))
        raise UserError(f"--condition: '{path}' has the colour {tuple(rgb[y, x].tolist())} at pixel (x={x}, y={y}), "
                        f"which is not in this model's layout palette: {listed}; paint each class in its colour "
                        "exactly (no anti-aliasing)")
    return seg.long()


def read_condition(path: str, kind: str, channels: int, classes: int = 0, factor: int = CONDITION_FACTOR,
                   colours: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A user's condition map file -> (1, C, H, W) in [-1, 1] at the image's size, as the condition tokenizer sees
    it: a PNG of class indices or an RGB picture painted in the layout palette `colours` ((classes, 3) uint8; each
    colour one class) for segmentation, an edge map (one channel, edges bright), a small image (lowres, repeated
    factor times), or a paired map of the image's size. A map of another kind (channels, classes, a colour outside
    the palette) is a UserError."""
    try:
        with Image.open(path) as im:
            im.load()
            mode, arr = im.mode, np.asarray(im)
    except FileNotFoundError:
        raise UserError(f"--condition: no file at '{path}'") from None
    except Exception as e:
        raise UserError(f"--condition: '{path}' is not a readable image ({type(e).__name__})") from None
    have = 1 if arr.ndim == 2 else arr.shape[2]
    if kind == "segmentation":
        if have in (3, 4) and colours is not None:
            seg = layout_classes(torch.from_numpy(np.array(arr[..., :3])), colours, path)
        elif have != 1 or mode not in ("L", "P", "I", "I;16"):
            raise UserError(f"--condition: a segmentation map is a one-channel PNG of class indices or an RGB picture "
                            f"in the layout palette; '{path}' has {have} channels ({mode})")
        else:
            seg = torch.from_numpy(arr.astype(np.int64))
        bad = seg[(seg >= classes) & (seg != IGNORE)]
        if len(bad):
            raise UserError(f"--condition: '{path}' holds class index {int(bad.max())}, beyond the condition "
                            f"tokenizer's {classes} classes (0..{classes - 1}, and {IGNORE} for none)")
        return one_hot(seg, classes)[None]
    want = 1 if kind == "edges" else channels
    if have not in (want,) and not (have == 4 and want == 3 and mode == "RGBA"):
        raise UserError(f"--condition: '{path}' has {have} channel(s); this model's {kind} maps have {want}")
    x = to_tensor(arr[..., :3] if have == 4 else arr, want)
    if kind == "edges":
        x = torch.where(x > 0, 1.0, -1.0)
    elif kind == "lowres":
        x = upsample(x, factor)
    return x[None]
