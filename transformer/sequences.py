"""The token layout of stage 2, for training and sampling alike: windows of the token grids, and the sequences built
from them. A GPT reads [the window's condition codes,] a start or class token, the codes but the last (with their
corruptions in training); a masked model the same prefix and all the codes, a random share of them [MASK]ed by the
cosine schedule. Classifier-free guidance runs each sequence twice, with its class and with the null class, and
mixes the two predictions. Both samplers and the training sequences build their prefixes here."""
import math
from typing import Optional

import torch

from transformer.gpt import GPTConfig


def crop_windows(window, generator, *grids: torch.Tensor) -> list[torch.Tensor]:
    """grids: (B, H, W) each -> (B, wh*ww) raster sequences of one random wh x ww crop each, the same crop in every
    grid (an image grid and its condition grid stay aligned)."""
    B, H, W = grids[0].shape
    wh, ww = window
    if (wh, ww) == (H, W):
        return [g.reshape(B, -1) for g in grids]
    top = torch.randint(0, H - wh + 1, (B,), generator=generator)
    left = torch.randint(0, W - ww + 1, (B,), generator=generator)
    rows = (top[:, None] + torch.arange(wh))[:, :, None]  # (B, wh, 1)
    cols = (left[:, None] + torch.arange(ww))[:, None, :]  # (B, 1, ww)
    return [g[torch.arange(B)[:, None, None], rows, cols].reshape(B, -1) for g in grids]  # (B, wh*ww) each


def window_seq(grid: torch.Tensor, top: int, left: int, window) -> torch.Tensor:
    """grid: (B, H, W) -> (B, wh*ww) the raster sequence of the window whose top-left corner is (top, left)."""
    wh, ww = window
    return grid[:, top:top + wh, left:left + ww].reshape(grid.shape[0], -1)


def with_condition(inputs: torch.Tensor, cond: Optional[torch.Tensor], gcfg: GPTConfig) -> torch.Tensor:
    """inputs: (B, T) -> (B, L + T) [cond as condition-token ids, inputs]; cond: (B, L) the window's condition codes,
    or None (inputs unchanged)."""
    return inputs if cond is None else torch.cat([cond.to(inputs.device) + gcfg.cond_offset, inputs], 1)


def sample_labels(gcfg: GPTConfig, batch: int, classes=None) -> torch.Tensor:
    """(B,) the classes of `batch` samples: `classes` cycled (None: every class in turn); -1 (none) for a model
    without classes."""
    if not gcfg.num_classes:
        if classes is not None:
            raise ValueError("classes given to an unconditional model")
        return torch.full((batch,), -1, dtype=torch.long)
    classes = list(range(gcfg.num_classes) if classes is None else classes)
    return torch.tensor([classes[i % len(classes)] for i in range(batch)], dtype=torch.long)


def guided(gcfg: GPTConfig, cfg_scale: float) -> bool:
    """Whether sampling runs classifier-free guidance: a class-conditional model, a scale other than 1."""
    return gcfg.num_classes > 0 and cfg_scale != 1.0


def with_null_class(prefix: torch.Tensor, gcfg: GPTConfig) -> torch.Tensor:
    """prefix: (B, P) -> (2B, P): the prefixes, then the same with the null class in place of the class token (the
    last prefix token): the unconditional half of guidance."""
    null = prefix.clone()
    null[:, -1] = gcfg.null_class_token
    return torch.cat([prefix, null])


def mix_guidance(out: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """out: (2B, ...) predictions with the class, then with the null class -> (B, ...) uncond + s (cond - uncond)."""
    cond, uncond = out.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


def prefix_ids(labels: torch.Tensor, gcfg: GPTConfig, class_dropout: float = 0.0, generator=None) -> torch.Tensor:
    """(B,) the token before the codes: the class token (the null class with probability class_dropout, for
    classifier-free guidance), or the start token of a model without classes."""
    if not gcfg.num_classes:
        return torch.full((len(labels),), gcfg.start_token, dtype=torch.long)
    prefix = gcfg.codebook_size + labels.clone()
    if class_dropout > 0:
        drop = torch.rand(len(labels), generator=generator) < class_dropout
        prefix[drop] = gcfg.null_class_token
    return prefix


def make_inputs(seq: torch.Tensor, labels: torch.Tensor, gcfg: GPTConfig, pkeep: float = 1.0,
                class_dropout: float = 0.0, generator=None, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
    """seq: (B, L) codes -> (B, L) inputs [prefix, seq[:-1]], with pkeep corruption and class dropout; with cond
    (B, L) condition codes, (B, 2L) inputs [cond, prefix, seq[:-1]]."""
    prefix = prefix_ids(labels, gcfg, class_dropout, generator)
    body = seq[:, :-1]
    if pkeep < 1.0:
        keep = torch.rand(body.shape, generator=generator) < pkeep
        body = torch.where(keep, body, torch.randint_like(body, gcfg.codebook_size, generator=generator))
    return with_condition(torch.cat([prefix[:, None], body], 1), cond, gcfg)


def mask_ratio(r: torch.Tensor) -> torch.Tensor:
    """MaskGIT's cosine schedule: the fraction of tokens masked at progress r in [0, 1] (1 at 0, 0 at 1)."""
    return torch.cos(math.pi / 2 * r)


def masked_inputs(seq: torch.Tensor, labels: torch.Tensor, gcfg: GPTConfig, class_dropout: float = 0.0,
                  generator=None, cond: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A masked model's training pair. seq: (B, L) codes -> inputs (B, 1 + L) [prefix, seq with a random set of
    positions replaced by [MASK]] ([cond, ...] with condition codes, (B, 2L + 1)) and targets (B, L): the codes
    at the masked positions, -100 (not scored) elsewhere. Each sequence masks ceil(cos(pi/2 r) L) positions,
    at least one, for r uniform in [0, 1) (the cosine schedule that sampling follows)."""
    B, L = seq.shape
    prefix = prefix_ids(labels, gcfg, class_dropout, generator)
    n = (mask_ratio(torch.rand(B, generator=generator)) * L).ceil().clamp(1, L)  # (B,) positions to mask
    rank = torch.rand(B, L, generator=generator).argsort(1).argsort(1)  # a random order of the positions
    masked = rank < n[:, None]  # (B, L)
    inputs = torch.cat([prefix[:, None], seq.masked_fill(masked, gcfg.mask_token)], 1)
    targets = seq.masked_fill(~masked, -100)
    return with_condition(inputs, cond, gcfg), targets


def training_pair(seq: torch.Tensor, labels: torch.Tensor, gcfg: GPTConfig, pkeep: float = 1.0,
                  class_dropout: float = 0.0, generator=None, cond: Optional[torch.Tensor] = None):
    """(inputs, targets) of either model kind: next-token prediction for a GPT, masked-token prediction for a
    masked model."""
    if gcfg.masked:
        return masked_inputs(seq, labels, gcfg, class_dropout, generator, cond)
    return make_inputs(seq, labels, gcfg, pkeep, class_dropout, generator, cond), seq
