"""LPIPS perceptual distance (VGG16 backbone, learned linear heads), as in Zhang et al. 2018.

The backbone weights come from torchvision's ImageNet VGG16 (downloaded to the torch cache on first
use), from a local state dict, or are random (tests only). The linear heads are the published ones,
shipped inside the `lpips` package; nothing is downloaded while the module is built, except the
ImageNet backbone when asked for.
"""
import os
import warnings

import torch
import torch.nn as nn

from utils.core.errors import UserError

# VGG16 "D" feature stack; LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (after conv 2, 4, 7, 10, 13)
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # indices in torchvision's vgg16().features of the tapped ReLUs
_CHANNELS = (64, 128, 256, 512, 512)
_OFFLINE_HELP = ("connect to the internet once so that torchvision caches them in ~/.cache/torch, "
                 "or set loss.lpips_vgg_weights=/path/to/vgg16.pth (a torchvision VGG16 state dict), "
                 "or turn the perceptual loss off with loss.perceptual_weight=0")


def _vgg16_features() -> nn.Sequential:
    layers, c = [], 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)  # indices match torchvision's vgg16().features[:30]


def _backbone_state_dict(vgg_weights: str) -> dict:
    """A state dict for _vgg16_features(), from torchvision's ImageNet weights or a local file."""
    if vgg_weights == "imagenet":
        from torchvision.models import VGG16_Weights
        try:
            sd = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except Exception as e:  # offline: URLError, OSError, ... wrapped in many ways by the hub code
            raise UserError(f"could not get the VGG16 ImageNet weights for LPIPS ({type(e).__name__}: {e}); "
                            f"{_OFFLINE_HELP}") from None
    else:
        if not os.path.isfile(vgg_weights):
            raise UserError(f"loss.lpips_vgg_weights: no file at '{vgg_weights}'; {_OFFLINE_HELP}")
        sd = torch.load(vgg_weights, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd)
    sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    if not sd:
        raise UserError(f"loss.lpips_vgg_weights: '{vgg_weights}' holds no 'features.*' keys of a torchvision VGG16")
    return {k: v for k, v in sd.items() if int(k.split(".")[0]) < 30}


def lpips_head_weights_path() -> str:
    try:
        import lpips
    except ImportError:
        raise UserError("the LPIPS linear heads come from the `lpips` package: pip install lpips") from None
    return os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")


class LPIPS(nn.Module):
    """forward(x, y): images (N, C, H, W) in [-1, 1], C = 1 or 3 -> (N,) perceptual distances."""

    def __init__(self, vgg_weights: str = "imagenet"):
        super().__init__()
        # ImageNet statistics expressed for inputs in [-1, 1] (the lpips package's ScalingLayer)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.features_net = _vgg16_features()[:30]
        if vgg_weights == "random":
            warnings.warn("LPIPS with a random VGG16 backbone: distances are not perceptual (tests and benchmarks only)")
        else:
            self.features_net.load_state_dict(_backbone_state_dict(vgg_weights), strict=True)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        heads = torch.load(lpips_head_weights_path(), map_location="cpu", weights_only=True)
        self.lins.load_state_dict({f"{i}.weight": heads[f"lin{i}.model.1.weight"] for i in range(len(_CHANNELS))})
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen: no dropout, no statistics

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (N, C, H, W) in [-1, 1] -> the five tapped VGG16 activations, channel-unit-normalised, fp32."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features_net):
            h = layer(h)
            if i == _TAPS[len(out)]:
                # normalise in fp32: sums of squares of VGG activations overflow fp16
                with torch.autocast(h.device.type, enabled=False):
                    f = h.float()
                    out.append(f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
                if len(out) == len(_TAPS):
                    return out
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # the target rarely needs a gradient: its pass then builds no graph, which saves a third of the
        # backward work compared with one pass over both images
        with torch.set_grad_enabled(torch.is_grad_enabled() and y.requires_grad):
            fy = self.features(y)
        fx = self.features(x)
        dist = 0.0
        with torch.autocast(x.device.type, enabled=False):
            for lin, a, b in zip(self.lins, fx, fy):
                dist = dist + lin((a - b).pow(2)).mean(dim=(1, 2, 3))  # (N,)
        return dist
