"""The training sequences of the GPT: windows cropped from the token grids, and the inputs built from them
([the window's condition codes,] a start or class token, the codes but the last), with their corruptions."""
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


def make_inputs(seq: torch.Tensor, labels: torch.Tensor, gcfg: GPTConfig, pkeep: float = 1.0,
                class_dropout: float = 0.0, generator=None, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
    """seq: (B, L) codes -> (B, L) inputs [prefix, seq[:-1]], with pkeep corruption and class dropout; with cond
    (B, L) condition codes, (B, 2L) inputs [cond, prefix, seq[:-1]]."""
    B = seq.shape[0]
    if gcfg.num_classes:
        prefix = gcfg.codebook_size + labels.clone()
        if class_dropout > 0:
            drop = torch.rand(B, generator=generator) < class_dropout
            prefix[drop] = gcfg.null_class_token
    else:
        prefix = torch.full((B,), gcfg.start_token, dtype=torch.long)
    body = seq[:, :-1]
    if pkeep < 1.0:
        keep = torch.rand(body.shape, generator=generator) < pkeep
        body = torch.where(keep, body, torch.randint_like(body, gcfg.codebook_size, generator=generator))
    inputs = torch.cat([prefix[:, None], body], 1)
    return inputs if cond is None else torch.cat([cond + gcfg.cond_offset, inputs], 1)
