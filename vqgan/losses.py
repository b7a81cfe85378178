"""Stage-1 losses: reconstruction + perceptual, codebook, and the GAN terms with the adaptive weight.

The generator objective (Esser et al. 2021, eq. 7):
    L = |x - x̂|_1 [+ |x - x̂|²] + w_p LPIPS(x, x̂) + w_cb L_vq + λ L_G,   L_G = -E[D(x̂)],
    λ = ||∇_L nll|| / (||∇_L L_G|| + δ),  L = the decoder's last layer, δ = 1e-4, clamped to [0, 1e4].
λ balances the two gradients at the decoder output so that the GAN term neither vanishes nor dominates.
"""
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F



def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating BCE: -log sigmoid(real) - log(1 - sigmoid(fake)), averaged and halved."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_weight(nll_grad: torch.Tensor, gan_grad: torch.Tensor, delta: float = 1e-4,
                    max_weight: float = 1e4) -> torch.Tensor:
    """λ = ||∇ nll|| / (||∇ L_G|| + δ), clamped to [0, max_weight], as a detached scalar tensor."""
    return (nll_grad.norm() / (gan_grad.norm() + delta)).clamp(0.0, max_weight).detach()


@dataclass
class LossWeights:
    l1: float = 1.0
    l2: float = 0.0
    perceptual: float = 1.0
    codebook: float = 1.0
    disc: float = 1.0  # multiplies λ


def generator_backward(x, x_rec, vq_loss, last_layer, weights: LossWeights, *, lpips=None, disc=None,
                       grad_scale: float = 1.0, autocast=None, class_targets=None, ignore_index: int = None) -> dict:
    """Computes the generator loss of one micro-batch and back-propagates `grad_scale` times it.

    x, x_rec: (B, C, H, W); vq_loss: scalar from the codebook; last_layer: the decoder's last weight.
    `autocast`: the precision context for the loss networks' forward passes (backward runs outside it).
    With `disc` None (before disc_start) nothing of the GAN is computed. With a discriminator, the
    gradient norms for λ are taken at the last layer from the gradients at x_rec, so the perceptual
    net and the discriminator are each back-propagated once, not twice as with autograd.grad on the
    full losses. class_targets: (B, H, W) class indices (ignore_index where none is set) for a tokenizer of
    class maps, whose x_rec are logits: the reconstruction term is then their cross-entropy ("ce"), weighted
    by l1.
    Returns the detached loss terms for logging."""
    autocast = autocast if autocast is not None else nullcontext()
    if class_targets is not None:
        if ignore_index is None:
            raise ValueError("class_targets need the ignore_index of their pixels without a class")
        rec = F.cross_entropy(x_rec.float(), class_targets, ignore_index=ignore_index) * weights.l1
        terms = {"ce": rec.detach()}
    else:
        rec = (x - x_rec.float()).abs().mean() * weights.l1
        if weights.l2 > 0:
            rec = rec + F.mse_loss(x_rec.float(), x) * weights.l2
        terms = {"l1": rec.detach()}
    nll = rec
    if lpips is not None and weights.perceptual > 0:
        with autocast:
            p = lpips(x_rec, x).mean()
        nll = nll + weights.perceptual * p
        terms["lpips"] = p.detach()
    terms["codebook"] = vq_loss.detach()
    if disc is None:
        loss = nll + weights.codebook * vq_loss
        (loss * grad_scale).backward()
        terms.update(nll=nll.detach(), total=loss.detach())
        return terms
    with autocast:
        logits_fake = disc(x_rec)
    g_loss = generator_loss(logits_fake.float())
    g_nll, = torch.autograd.grad(nll * grad_scale, x_rec, retain_graph=True)  # (B, C, H, W)
    g_gan, = torch.autograd.grad(g_loss * grad_scale, x_rec)  # frees the discriminator graph
    w_nll, = torch.autograd.grad(x_rec, last_layer, g_nll, retain_graph=True)
    w_gan, = torch.autograd.grad(x_rec, last_layer, g_gan, retain_graph=True)
    lam = adaptive_weight(w_nll, w_gan, delta=1e-4 * grad_scale) * weights.disc
    # a surrogate whose gradient equals that of nll + λ L_G + w_cb L_vq, using the gradients at x_rec
    surrogate = (x_rec * (g_nll + lam * g_gan)).sum() + weights.codebook * grad_scale * vq_loss
    surrogate.backward()
    loss = nll + lam * g_loss + weights.codebook * vq_loss
    terms.update(nll=nll.detach(), g_loss=g_loss.detach(), adaptive_weight=lam, total=loss.detach(),
                 logits_fake=logits_fake.detach().mean())
    return terms


def discriminator_loss(disc, x, x_rec, kind: str = "hinge") -> dict:
    """Discriminator loss on real images and *detached* reconstructions: no gradient reaches the generator."""
    logits_real = disc(x.detach()).float()
    logits_fake = disc(x_rec.detach()).float()
    loss = D_LOSSES[kind](logits_real, logits_fake)
    return {"d_loss": loss, "logits_real": logits_real.detach().mean(), "logits_fake_d": logits_fake.detach().mean()}
