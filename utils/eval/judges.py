"""What the judges of generated images share (utils/eval/classifier.py, utils/eval/segmenter.py): the training
recipe (EPOCHS epochs of Adam 2e-3 with a cosine decay, augmented batches, seeded), the augmentations, and the
number of rendered images a judge of a generated set learns from and is held out on."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES_TRAIN, SHAPES_HELD_OUT, EPOCHS = 30_000, 3_000, 4


def blur_noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
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


def shift(x: torch.Tensor, g: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Every image moved by up to `pixels` in each direction (zero padding)."""
    B, _, H, W = x.shape
    padded = F.pad(x, (pixels,) * 4, value=-1.0)
    dy, dx = (torch.randint(0, 2 * pixels + 1, (2, B), generator=g)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])


@torch.enable_grad()
def fit(net: nn.Module, x: torch.Tensor, targets: torch.Tensor, loss_fn, augment, batch: int, name: str, log) -> None:
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
