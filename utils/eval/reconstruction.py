"""Stage 1's figures: how well a tokenizer reconstructs what it is given, in one place for the training script's
validation, the time-to-quality benchmark and `python -m utils.reconstruct`."""
import torch

from utils.core.distributed import all_reduce_sum
from utils.data.conditions import class_targets
from utils.eval.metrics import ClassMapScores, FeatureStats, frechet_distance, psnr, ssim
from vqgan.codebook import usage_from_counts


class ReconstructionScores:
    """Sums over batches and across processes of PSNR, SSIM and L1 on images scaled to [0, 1] (peak 1), LPIPS and
    rFID when their networks are given, and the codes used (their share of the codebook and perplexity). A tokenizer
    of class maps (class_maps: its number of classes) is scored by pixel accuracy and mean IoU instead of the
    image figures."""

    def __init__(self, codebook_size: int, device=None, class_maps: int = 0, lpips=None, inception=None):
        self.lpips, self.inception = lpips, inception
        self.sums = torch.zeros(5, device=device, dtype=torch.float64)  # psnr, ssim, l1, lpips, count
        self.counts = torch.zeros(codebook_size, device=device)  # uses of each code
        self.maps = ClassMapScores(class_maps, device) if class_maps else None
        self.real, self.fake = (FeatureStats(2048, device), FeatureStats(2048, device)) if inception is not None \
            else (None, None)

    def update(self, x: torch.Tensor, x_rec: torch.Tensor, indices: torch.Tensor) -> None:
        """x, x_rec: (B, C, H, W) inputs and reconstructions in [-1, 1] (class-map logits for a tokenizer of class
        maps); indices: (B, h, w) the codes used."""
        x_rec = x_rec.float()
        self.counts += torch.bincount(indices.flatten(), minlength=len(self.counts)).float()
        if self.maps is not None:
            self.maps.update(x_rec, class_targets(x))
            return
        a, b = (x + 1) / 2, ((x_rec + 1) / 2).clamp(0, 1)
        self.sums[0] += psnr(a, b).sum()
        self.sums[1] += ssim(a, b).sum()
        self.sums[2] += (a - b).abs().mean(dim=(1, 2, 3)).sum()
        if self.lpips is not None:
            self.sums[3] += self.lpips(x_rec, x).sum()
        self.sums[4] += x.shape[0]
        if self.inception is not None:
            self.real.update(self.inception(x))
            self.fake.update(self.inception(x_rec.clamp(-1, 1)))

    def result(self) -> dict:
        """The figures over every process's batches (call it on every rank)."""
        all_reduce_sum(self.sums)
        all_reduce_sum(self.counts)  # a code counts as used when any rank used it
        n = max(1.0, self.sums[4].item())
        used, ppl = usage_from_counts(self.counts)
        if self.maps is not None:
            return {**self.maps.all_reduce().result(), "codebook_usage": used, "perplexity": ppl}
        out = {"psnr": self.sums[0].item() / n, "ssim": self.sums[1].item() / n, "l1": self.sums[2].item() / n,
               "codebook_usage": used, "perplexity": ppl}
        if self.lpips is not None:
            out["lpips"] = self.sums[3].item() / n
        if self.inception is not None:  # over every rank's images: their feature statistics add up
            out["rfid"] = frechet_distance(self.real.all_reduce(), self.fake.all_reduce())
        return out


def fixed_crops(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, C, size, size): one crop of each image, where `generator` puts it."""
    H, W = x.shape[-2:]
    top = torch.randint(0, H - size + 1, (len(x),), generator=generator).tolist()
    left = torch.randint(0, W - size + 1, (len(x),), generator=generator).tolist()
    return torch.stack([img[:, t:t + size, l:l + size] for img, t, l in zip(x, top, left)])


# the figures of fixed validation crops that metrics.json adds beside those of whole images
CROP_FIGURES = ("psnr", "ssim", "pixel_accuracy", "miou")


@torch.no_grad()
def evaluate(model, loader, device, ctx, lpips=None, inception=None, max_batches: int = 0,
             class_maps: bool = False, crop_size: int = None) -> tuple[dict, tuple]:
    """A VQGAN's figures over the (sharded) val split of `loader` (at most max_batches batches; 0: all), and the first
    batch's inputs and reconstructions (8 of each). class_maps: the model tokenizes class maps. crop_size: also the
    figures of one fixed crop of that size per image (the same crops at every evaluation), as crop_<figure>."""
    model.eval()
    classes = model.channels if class_maps else 0
    scores = ReconstructionScores(model.codebook.codebook_size, device, classes, lpips, inception)
    crops = ReconstructionScores(model.codebook.codebook_size, device, classes) if crop_size else None
    where = torch.Generator().manual_seed(1234)
    first = None
    for i, (x, _) in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        x = x.to(device, non_blocking=True)
        with ctx:
            x_rec, _, info = model(x)
        if first is None:
            first = (x[:8].cpu(), x_rec[:8].float().cpu())
        scores.update(x, x_rec, info["indices"])
        if crops is not None:
            xc = fixed_crops(x, crop_size, where)
            with ctx:
                xc_rec, _, info = model(xc)
            crops.update(xc, xc_rec, info["indices"])
    out = scores.result()
    if crops is not None:
        out.update({f"crop_{k}": v for k, v in crops.result().items() if k in CROP_FIGURES})
    return out, first
