"""Image metrics on [0, 1] images (peak 1): PSNR, SSIM, L1; and the Frechet distance for rFID."""
import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x, y: (B, C, H, W) in [0, 1] -> (B,) PSNR in dB (peak 1), capped at 100 dB for identical images."""
    mse = (x.float() - y.float()).pow(2).mean(dim=(1, 2, 3))
    return (-10.0 * torch.log10(mse.clamp_min(1e-10))).clamp_max(100.0)


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    g = torch.exp(-(torch.arange(size, dtype=torch.float32, device=device) - size // 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11) -> torch.Tensor:
    """x, y: (B, C, H, W) in [0, 1] -> (B,) mean SSIM (Wang et al. 2004: 11x11 Gaussian, sigma 1.5,
    K1 = 0.01, K2 = 0.03, valid windows only), averaged over channels."""
    x, y = x.float(), y.float()
    C = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(window, 1.5, x.device).expand(C, 1, window, window)
    mu_x, mu_y = F.conv2d(x, w, groups=C), F.conv2d(y, w, groups=C)
    sxx = F.conv2d(x * x, w, groups=C) - mu_x ** 2
    syy = F.conv2d(y * y, w, groups=C) - mu_y ** 2
    sxy = F.conv2d(x * y, w, groups=C) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with the trace of the square root from the
    eigenvalues of S1^(1/2) S2 S1^(1/2) (symmetric, so eigh is stable) in float64."""
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    e1, v1 = torch.linalg.eigh(cov1)
    s1 = v1 @ torch.diag(e1.clamp_min(0).sqrt()) @ v1.t()
    m = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.t()) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt)


def mean_cov(feats: torch.Tensor):
    f = feats.double()
    mu = f.mean(0)
    d = f - mu
    return mu, d.t() @ d / max(1, f.shape[0] - 1)


class InceptionFeatures(torch.nn.Module):
    """torchvision's ImageNet Inception-v3 pool features (2048-d) for rFID. Note: pytorch-fid uses the
    original TF Inception weights, so absolute values differ slightly from published FIDs."""

    def __init__(self):
        super().__init__()
        from torchvision.models import Inception_V3_Weights, inception_v3
        from utils.errors import UserError
        try:
            net = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1, aux_logits=True)
        except Exception as e:
            raise UserError(f"rFID needs torchvision's Inception-v3 ImageNet weights, which could not be had "
                            f"({type(e).__name__}: {e}); connect once to cache them, or set train.rfid=false") from None
        net.fc = torch.nn.Identity()
        self.net = net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> (B, 2048)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate((x + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
        return self.net((x - mean) / std)
