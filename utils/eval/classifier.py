"""Judges of generated images, trained on real ones: a small CNN classifier (does a sample show the class it was
asked for? and the feature space of a Fréchet distance between samples and real images). The segmenters, judges of
samples drawn for a layout, are in utils/eval/segmenter.py; both train by utils/eval/judges.py.

Recipes (trained on first use, cached under {run.out_dir}/cache/), as each dataset's record names them
(utils/data/spec.py: judge):
- "rendered" (shapes): SHAPES_TRAIN images the dataset renders for its judge (the shapes with a decoy class "v",
  the right triangle turned by 45 degrees, the typical failure of a generated triangle, so that a V never passes
  for a triangle), blurred (sigma up to 1.2) and noised at random so that soft reconstructions are judged like
  sharp originals; held-out accuracy on SHAPES_HELD_OUT other rendered images.
- "real" (mnist, fashion_mnist): the real training split (60,000 images, shifted by up to 2 pixels at random);
  accuracy on the real test split.
"""
import hashlib
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.core.checkpoint import save_atomic
from utils.core.errors import UserError
from utils.data.images import stack
from utils.data.registry import DATASETS, build_datasets, dataset_spec
from utils.eval import judges
from utils.eval.judges import blur_noise, fit, shift

_VERSION = 1  # bump when a recipe changes: the cache key holds it


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


def recipe_data(dataset: str, data) -> tuple[tuple, tuple, tuple[str, ...]]:
    """((train images, labels), (held-out images, labels), class names) of a recipe."""
    spec = dataset_spec(dataset)
    if spec.judge == "rendered":
        return spec.judge_data(data.image_size, judges.SHAPES_TRAIN, judges.SHAPES_HELD_OUT)
    tr, va = build_datasets(data, 0, augment=False)
    return stack(tr), stack(va), spec.class_names


def train_classifier(dataset: str, data, log=None, batch: int = 128) -> tuple[SmallCNN, dict]:
    """Trains the recipe's classifier (Adam 2e-3, cosine to 0, seeded) -> (model in eval mode, info)."""
    (x, y), (xv, yv), names = recipe_data(dataset, data)
    torch.manual_seed(0)
    model = SmallCNN(x.shape[1], len(names))
    fit(model, x, y, F.cross_entropy, blur_noise if dataset_spec(dataset).judge == "rendered" else shift, batch,
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
           "sizes": [judges.SHAPES_TRAIN, judges.SHAPES_HELD_OUT, judges.EPOCHS]}
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
