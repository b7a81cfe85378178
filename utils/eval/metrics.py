"""Image metrics on [0, 1] images (peak 1): PSNR, SSIM; and rFID's parts: the standard FID Inception features,
their statistics gathered across processes, and the Fréchet distance."""
import torch
import torch.nn.functional as F

from utils.core.distributed import all_reduce_sum
from utils.core.errors import UserError
from utils.data.conditions import IGNORE


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


@torch.no_grad()
def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of `fake` against `real` features, (N, D) each:
    a set's manifold is the union of balls around its points, each reaching the point's k-th nearest neighbour in
    the set. Precision: the share of fake points inside the real manifold (fidelity); recall: the share of real
    points inside the fake one (diversity)."""
    real, fake = real.double(), fake.double()

    def radii(x: torch.Tensor) -> torch.Tensor:  # (N,): distance to the k-th nearest other point
        return torch.cat([torch.cdist(b, x).kthvalue(min(k + 1, len(x)), dim=1).values for b in x.split(chunk)])

    def inside(points: torch.Tensor, centres: torch.Tensor, r: torch.Tensor) -> float:
        hits = [(torch.cdist(b, centres) <= r[None]).any(1) for b in points.split(chunk)]
        return torch.cat(hits).double().mean().item()
    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def frechet_distance(a: "FeatureStats", b: "FeatureStats") -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets: pytorch-fid's implementation, the one
    published FIDs use."""
    from pytorch_fid.fid_score import calculate_frechet_distance
    return float(calculate_frechet_distance(*a.mean_cov(), *b.mean_cov()))


def frechet_of(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance between feature sets a (N, D) and b (M, D)."""
    stats = []
    for feats in (a, b):
        stats.append(FeatureStats(feats.shape[1]))
        stats[-1].update(feats)
    return frechet_distance(*stats)


class FeatureStats:
    """The count, sum and sum of outer products of a set of feature vectors, in float64: enough for their mean
    and covariance, and combined across processes exactly by summing (all_reduce), which is how rFID gathers the
    Inception features of every rank's share of the validation set."""

    def __init__(self, dim: int, device=None):
        self.n = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, feats: torch.Tensor) -> None:
        """feats: (N, dim)."""
        f = feats.double()
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.t() @ f

    def all_reduce(self) -> "FeatureStats":
        for t in (self.n, self.sum, self.outer):
            all_reduce_sum(t)
        return self

    def mean_cov(self):
        """(mean (dim,), covariance (dim, dim)) as numpy arrays; the covariance unbiased, as numpy.cov's."""
        n = self.n.item()
        mu = self.sum / n
        cov = (self.outer - n * torch.outer(mu, mu)) / max(1.0, n - 1)
        return mu.cpu().numpy(), cov.cpu().numpy()


class InceptionFeatures(torch.nn.Module):
    """The standard FID Inception-v3 (pytorch-fid's port of the TensorFlow weights, the network behind published
    FIDs, shared by torch-fidelity and torchmetrics): 2048-d pool features. Its weights download once into the torch
    hub cache (~/.cache/torch/hub/checkpoints)."""

    def __init__(self):
        super().__init__()
        try:
            from pytorch_fid.inception import InceptionV3
        except ImportError:
            raise UserError("rFID needs the pytorch-fid package: pip install pytorch-fid, or set train.rfid=false") from None
        try:
            self.net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True)
        except Exception as e:  # offline: URLError, OSError, ... wrapped in many ways by the hub code
            raise UserError(f"rFID needs the FID Inception weights, which could not be had ({type(e).__name__}: {e}); "
                            "connect once to cache them in ~/.cache/torch/hub/checkpoints, or set "
                            "train.rfid=false") from None
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> (B, 2048)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(((x.float() + 1) / 2).clamp(0, 1))[0].flatten(1)  # resized to 299 inside


class ClassMapScores:
    """Pixel accuracy and mean IoU of predicted class maps against target maps (IGNORE pixels left out), summed over
    batches and across processes; the mean IoU over the classes present in the targets."""

    def __init__(self, classes: int, device=None, ignore: int = IGNORE):
        self.ignore = ignore
        self.counts = torch.zeros(3, classes, dtype=torch.float64, device=device)  # intersection, union, present

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """logits: (B, classes, H, W); targets: (B, H, W) class indices."""
        pred, valid = logits.argmax(1), targets != self.ignore
        k = torch.arange(self.counts.shape[1], device=logits.device)[:, None]
        p, t = (pred[valid][None] == k), (targets[valid][None] == k)  # (classes, pixels)
        self.counts += torch.stack([(p & t).sum(1), (p | t).sum(1), t.sum(1)]).double()

    def all_reduce(self) -> "ClassMapScores":
        all_reduce_sum(self.counts)
        return self

    def per_class(self) -> list:
        """Each class's IoU (None for a class absent from the targets)."""
        inter, union, present = self.counts
        return [(i / u).item() if p > 0 else None for i, u, p in zip(inter, union, present)]

    def result(self) -> dict:
        inter, union, present = self.counts
        pixels = present.sum().clamp_min(1)
        iou = inter[present > 0] / union[present > 0]
        return {"pixel_accuracy": (inter.sum() / pixels).item(), "miou": iou.mean().item() if len(iou) else 0.0}
