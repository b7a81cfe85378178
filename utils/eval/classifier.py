"""Judges of generated images, trained on real ones: a small CNN classifier (does a sample show the class it was
asked for? and the feature space of a Fréchet distance between samples and real images), and for shapes a small
segmenter (which pixels belong to the shape: does a sample drawn for a mask cover it?).

Recipes (trained on first use, cached under {run.out_dir}/cache/), as each dataset's record names them
(utils/data/spec.py: judge):
- "rendered" (shapes): SHAPES_TRAIN images the dataset renders for its judge (the shapes with a decoy class "v",
  the right triangle turned by 45 degrees, the typical failure of a generated triangle, so that a V never passes
  for a triangle), blurred (sigma up to 1.2) and noised at random so that soft reconstructions are judged like
  sharp originals; held-out accuracy on SHAPES_HELD_OUT other rendered images.
- "real" (mnist, fashion_mnist): the real training split (60,000 images, shifted by up to 2 pixels at random);
  accuracy on the real test split.
- a segmenter of a dataset's objects (shapes: segmenter_data): a per-pixel foreground logit, trained like a
  rendered classifier on SHAPES_TRAIN rendered images and their masks; mean IoU on SHAPES_HELD_OUT other ones.
"""
import hashlib
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.core.checkpoint import save_atomic
from utils.core.errors import UserError
from utils.data.images import stack
from utils.data.registry import DATASETS, build_datasets, dataset_spec

SHAPES_TRAIN, SHAPES_HELD_OUT, EPOCHS = 30_000, 3_000, 4
_VERSION = 1  # bump when a recipe changes: the cache key holds it
_SEGMENTER_VERSION = 2


class SmallCNN(nn.Module):
    """Three stages of two 3x3 conv + BatchNorm + ReLU, each halving the image, then global average pooling:
    features(x) (B, 4 * width); forward(x) the class logits."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        layers, c = [], in_channels
        for k in (1, 2, 4):
            for _ in range(2):
                layers += [nn.Conv2d(c, width * k, 3, padding=1, bias=False), nn.BatchNorm2d(width * k), nn.ReLU()]
                c = width * k
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> (B, 4 * width)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _blur_noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Half the images blurred by a Gaussian of random sigma in [0.3, 1.2], all noised with a random std up to 0.05."""
    B = x.shape[0]
    out = x.clone()
    for i in torch.nonzero(torch.rand(B, generator=g) < 0.5).flatten().tolist():
        sigma = 0.3 + 0.9 * torch.rand((), generator=g).item()
        k = torch.arange(-2, 3, dtype=torch.float32)
        w = torch.exp(-k ** 2 / (2 * sigma ** 2))
        w = w / w.sum()
        c = x.shape[1]
        img = F.pad(x[i:i + 1], (2, 2, 2, 2), mode="replicate")
        img = F.conv2d(img, w.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
        out[i] = F.conv2d(img, w.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)[0]
    return (out + torch.randn(x.shape, generator=g) * 0.05 * torch.rand(B, 1, 1, 1, generator=g)).clamp(-1, 1)


def _shift(x: torch.Tensor, g: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Every image moved by up to `pixels` in each direction (zero padding)."""
    B, _, H, W = x.shape
    padded = F.pad(x, (pixels,) * 4, value=-1.0)
    dy, dx = (torch.randint(0, 2 * pixels + 1, (2, B), generator=g)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])


def recipe_data(dataset: str, data) -> tuple[tuple, tuple, tuple[str, ...]]:
    """((train images, labels), (held-out images, labels), class names) of a recipe."""
    spec = dataset_spec(dataset)
    if spec.judge == "rendered":
        return spec.judge_data(data.image_size, SHAPES_TRAIN, SHAPES_HELD_OUT)
    tr, va = build_datasets(data, 0, augment=False)
    return stack(tr), stack(va), spec.class_names


@torch.enable_grad()
def _fit(net: nn.Module, x: torch.Tensor, targets: torch.Tensor, loss_fn, augment, batch: int, name: str, log) -> None:
    """The recipe both judges share: EPOCHS epochs of Adam 2e-3 with a cosine decay to 0, augmented batches, all
    seeded; leaves the net in eval mode."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    steps = EPOCHS * math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    net.train()
    for epoch in range(EPOCHS):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            loss = loss_fn(net(augment(x[idx], g)), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if log:
            log.info(f"{name}: epoch {epoch + 1}/{EPOCHS}, last batch loss {loss.item():.3f}")
    net.eval()


def train_classifier(dataset: str, data, log=None, batch: int = 128) -> tuple[SmallCNN, dict]:
    """Trains the recipe's classifier (Adam 2e-3, cosine to 0, seeded) -> (model in eval mode, info)."""
    (x, y), (xv, yv), names = recipe_data(dataset, data)
    torch.manual_seed(0)
    model = SmallCNN(x.shape[1], len(names))
    _fit(model, x, y, F.cross_entropy, _blur_noise if dataset_spec(dataset).judge == "rendered" else _shift, batch,
         f"classifier for {dataset}", log)
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in xv.split(500)])
    info = {"classes": list(names), "held_out_accuracy": (pred == yv).float().mean().item(), "held_out": len(yv),
            "per_class": {n: (pred[yv == k] == k).float().mean().item() for k, n in enumerate(names)}}
    return model, info


def load_or_train(dataset: str, data, cache_dir: str, log=None) -> tuple[SmallCNN, dict]:
    """The recipe's classifier from the cache, or trained now and cached (keyed by the recipe and its data)."""
    recipes = [name for name, spec in DATASETS.items() if spec.judge]
    if dataset not in recipes:
        raise UserError(f"no classifier recipe for data.dataset={dataset}; there are: {', '.join(recipes)}")
    key = {"version": _VERSION, "dataset": dataset, "image_size": data.image_size, "channels": data.channels,
           "sizes": [SHAPES_TRAIN, SHAPES_HELD_OUT, EPOCHS]}
    if DATASETS[dataset].judge == "real":
        key.update(root=os.path.abspath(data.root))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    path = os.path.join(cache_dir, f"classifier_{dataset}-{digest}.pt")
    if os.path.isfile(path):
        ck = torch.load(path, map_location="cpu", weights_only=True)
        model = SmallCNN(ck["in_channels"], len(ck["info"]["classes"]))
        model.load_state_dict(ck["model"])
        return model.eval(), ck["info"]
    if log:
        log.info(f"training the {dataset} classifier once (a minute or two on a CPU) -> {path}")
    model, info = train_classifier(dataset, data, log)
    save_atomic({"model": model.state_dict(), "in_channels": model.body[0].in_channels, "info": info}, path)
    return model, info


@torch.no_grad()
def classify(model: SmallCNN, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """images: (N, C, H, W) in [-1, 1] -> (predicted classes (N,), features (N, D))."""
    preds, feats = [], []
    for b in images.split(batch):
        f = model.features(b.float())
        preds.append(model.head(f).argmax(1))
        feats.append(f)
    return torch.cat(preds), torch.cat(feats)



def _convs(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallSegNet(nn.Module):
    """A small U-Net that marks the shape's pixels in a shapes image: three halvings (32 -> 4 pixels, so that every
    pixel sees the whole image: inside and outside a shape look alike locally), three doublings with skip
    connections, a foreground logit per pixel."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.down = nn.ModuleList([_convs(3, w), _convs(w, 2 * w), _convs(2 * w, 4 * w), _convs(4 * w, 4 * w)])
        self.up = nn.ModuleList([_convs(8 * w, 2 * w), _convs(4 * w, w), _convs(2 * w, w)])
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1], H and W multiples of 8 -> (B, H, W) foreground logits."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1))
        return self.out(x)[:, 0]


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target: (B, H, W) bool -> (B,) intersection over union (1 where both are empty)."""
    inter, union = (pred & target).sum((1, 2)).float(), (pred | target).sum((1, 2)).float()
    return torch.where(union > 0, inter / union.clamp_min(1), 1.0)


def train_segmenter(data, log=None, batch: int = 64) -> tuple[SmallSegNet, dict]:
    """The recovery of an object's region from an image of the dataset: trained on SHAPES_TRAIN rendered images and
    masks (blurred and noised as the rendered classifier's), scored by mean IoU on SHAPES_HELD_OUT other ones."""
    (x, m), (xv, mv) = dataset_spec(data.dataset).segmenter_data(data.image_size, SHAPES_TRAIN, SHAPES_HELD_OUT)
    torch.manual_seed(0)
    net = SmallSegNet()
    _fit(net, x, m.float(), F.binary_cross_entropy_with_logits, _blur_noise, batch, "shape segmenter", log)
    with torch.no_grad():
        pred = torch.cat([net(b) > 0 for b in xv.split(500)])
    return net, {"held_out_iou": iou(pred, mv).mean().item(), "held_out": len(mv)}


def load_or_train_segmenter(data, cache_dir: str, log=None) -> tuple[SmallSegNet, dict]:
    """The dataset's segmenter from the cache, or trained now and cached."""
    if not dataset_spec(data.dataset).segmenter_data:
        raise UserError(f"no segmenter recipe for data.dataset={data.dataset}")
    size = data.image_size
    key = hashlib.sha256(json.dumps([_SEGMENTER_VERSION, size, SHAPES_TRAIN, SHAPES_HELD_OUT, EPOCHS]).encode()).hexdigest()[:8]
    path = os.path.join(cache_dir, f"segmenter_{data.dataset}-{key}.pt")
    if os.path.isfile(path):
        ck = torch.load(path, map_location="cpu", weights_only=True)
        net = SmallSegNet()
        net.load_state_dict(ck["model"])
        return net.eval(), ck["info"]
    if log:
        log.info(f"training the {data.dataset} segmenter once -> {path}")
    net, info = train_segmenter(data, log)
    save_atomic({"model": net.state_dict(), "info": info}, path)
    return net, info
