"""Segmenters, the judges of samples drawn for a layout: a small fully convolutional U-Net trained on real images
and their maps (trained on first use, cached under {run.out_dir}/cache/), as each dataset's record provides them
(utils/data/spec.py: segmenter_data).
- objects (shapes): a per-pixel foreground logit, trained on SHAPES_TRAIN rendered images and their masks,
  blurred and noised as the rendered classifier's; mean IoU on SHAPES_HELD_OUT other ones.
- layouts (scenes): a logit per class and pixel, trained on LAYOUT_CROPS random 64x64 crops of real canvases and
  their layouts (blurred and noised alike); mean IoU over the classes present, intersections and unions summed
  over LAYOUT_HELD_OUT whole held-out canvases (ClassMapScores, as the figures of samples are scored).
"""
import hashlib
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.core.checkpoint import save_atomic
from utils.core.errors import UserError
from utils.data.registry import dataset_spec
from utils.eval import judges
from utils.eval.judges import blur_noise, fit
from utils.eval.metrics import ClassMapScores

LAYOUT_CROPS, LAYOUT_HELD_OUT = 7_500, 100
_VERSION = 2  # bump when a recipe changes: the cache key holds it


def _convs(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallSegNet(nn.Module):
    """A small U-Net: three halvings (32 -> 4 pixels, so that every pixel of a 32x32 image sees all of it: inside
    and outside a shape look alike locally), three doublings with skip connections, then a foreground logit per
    pixel (classes=1) or a logit per class and pixel. Fully convolutional: it segments images of any size that is
    a multiple of 8."""

    def __init__(self, width: int = 16, classes: int = 1):
        super().__init__()
        w = width
        self.down = nn.ModuleList([_convs(3, w), _convs(w, 2 * w), _convs(2 * w, 4 * w), _convs(4 * w, 4 * w)])
        self.up = nn.ModuleList([_convs(8 * w, 2 * w), _convs(4 * w, w), _convs(2 * w, w)])
        self.out = nn.Conv2d(w, classes, 1)

    def _down(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1], H and W multiples of 8 -> (B, H, W) foreground logits (one class) or
        (B, classes, H, W) logits."""
        skips = self._down(x)
        x = skips[-1]
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1))
        out = self.out(x)
        return out[:, 0] if out.shape[1] == 1 else out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, 4 * width): the deepest features averaged over positions (a Fréchet distance's
        feature space)."""
        return self._down(x)[-1].mean(dim=(2, 3))


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target: (B, H, W) bool -> (B,) intersection over union (1 where both are empty)."""
    inter, union = (pred & target).sum((1, 2)).float(), (pred | target).sum((1, 2)).float()
    return torch.where(union > 0, inter / union.clamp_min(1), 1.0)


@torch.no_grad()
def segment(net: SmallSegNet, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """images: (N, 3, H, W) in [-1, 1] -> (N, H, W): class indices (a layout segmenter) or the foreground (bool)."""
    out = [net(b.float()) for b in images.split(batch)]
    return torch.cat([o > 0 if o.dim() == 3 else o.argmax(1) for o in out])


def layout_scores(pred: torch.Tensor, target: torch.Tensor, classes: int) -> ClassMapScores:
    """pred, target: (N, H, W) class indices -> their ClassMapScores (intersections and unions summed over all)."""
    scores = ClassMapScores(classes)
    scores.update(F.one_hot(pred.long(), classes).permute(0, 3, 1, 2), target.long())
    return scores


def train_segmenter(data, log=None, batch: int = 64) -> tuple[SmallSegNet, dict]:
    """The dataset's segmenter, trained on its segmenter_data (Adam 2e-3, cosine to 0, seeded), and its held-out
    score."""
    spec = dataset_spec(data.dataset)
    layouts = spec.segmenter == "layouts"
    n, n_held_out = (LAYOUT_CROPS, LAYOUT_HELD_OUT) if layouts else (judges.SHAPES_TRAIN, judges.SHAPES_HELD_OUT)
    (x, m), (xv, mv) = spec.segmenter_data(data.image_size, n, n_held_out)
    torch.manual_seed(0)
    if not layouts:
        net = SmallSegNet()
        fit(net, x, m.float(), F.binary_cross_entropy_with_logits, blur_noise, batch, "shape segmenter", log)
        return net, {"held_out_iou": iou(segment(net, xv), mv).mean().item(), "held_out": len(mv)}
    net = SmallSegNet(classes=spec.mask_classes)
    fit(net, x, m.long(), F.cross_entropy, blur_noise, batch, f"{data.dataset} layout segmenter", log)
    scores = layout_scores(segment(net, xv), mv, spec.mask_classes)
    return net, {"held_out_iou": scores.result()["miou"], "held_out": len(mv),
                 "held_out_per_class": dict(zip(spec.mask_names, scores.per_class()))}


def load_or_train_segmenter(data, cache_dir: str, log=None) -> tuple[SmallSegNet, dict]:
    """The dataset's segmenter from the cache, or trained now and cached."""
    spec = dataset_spec(data.dataset)
    if not spec.segmenter_data:
        raise UserError(f"no segmenter recipe for data.dataset={data.dataset}")
    size = data.image_size
    recipe = [_VERSION, size, judges.SHAPES_TRAIN, judges.SHAPES_HELD_OUT, judges.EPOCHS]
    if data.dataset != "shapes":
        recipe += [data.dataset, LAYOUT_CROPS, LAYOUT_HELD_OUT]
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:8]
    path = os.path.join(cache_dir, f"segmenter_{data.dataset}-{key}.pt")
    if os.path.isfile(path):
        ck = torch.load(path, map_location="cpu", weights_only=True)
        net = SmallSegNet(classes=ck["model"]["out.weight"].shape[0])
        net.load_state_dict(ck["model"])
        return net.eval(), ck["info"]
    if log:
        log.info(f"training the {data.dataset} segmenter once -> {path}")
    net, info = train_segmenter(data, log)
    save_atomic({"model": net.state_dict(), "info": info}, path)
    return net, info
