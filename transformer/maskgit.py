"""Parallel decoding of a masked (MaskGIT) model: the second sampler, beside the autoregressive one.

A window is decoded in `steps` rounds (Chang et al., 2022). Every round predicts all masked positions at
once and samples a code for each; the sampled codes are ranked by their log-probability plus Gumbel noise
annealed from `choice_temperature` to 0, and the least confident are masked again, so that after round t
a fraction cos(pi/2 t/steps) of the initially unknown positions is still masked (the training schedule).
Given positions (`keep`) are never re-sampled: completion and free-form inpainting are the same call.

Grids larger than the window are covered by windows at half-window strides in raster order, each decoded
from the positions already known inside it (the given ones and those of earlier windows): windowed
parallel decoding, the masked counterpart of the sliding window.
"""
import math
from typing import Optional, Sequence

import torch

from transformer.gpt import GPT
from transformer.sampling import checked_grid, filter_logits
from transformer.sequences import guided, mix_guidance, prefix_ids, sample_labels, window_seq, with_condition, \
    with_null_class

STEPS = 8                   # decoding rounds per window when none are given (MaskGIT uses 8 to 12)
CHOICE_TEMPERATURE = 4.5    # the first round's confidence noise, annealed to 0 (MaskGIT's setting)


def window_origins(grid: tuple[int, int], window: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of the windows covering `grid`: half-window strides, the last flush with the border."""
    def starts(n: int, w: int) -> list[int]:
        s = list(range(0, n - w + 1, max(1, w // 2)))
        return s if s[-1] == n - w else s + [n - w]
    return [(t, l) for t in starts(grid[0], window[0]) for l in starts(grid[1], window[1])]


def _logits(model: GPT, prefix: torch.Tensor, seq: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """prefix (B, P), seq (B, L) with [MASK]s -> (B, L, K) code logits, with classifier-free guidance against the
    null class when cfg_scale != 1 for a class-conditional model."""
    mixed = guided(model.cfg, cfg_scale)
    if mixed:
        prefix, seq = with_null_class(prefix, model.cfg), torch.cat([seq, seq])
    out = model(torch.cat([prefix, seq], 1))[0][:, -seq.shape[1]:].float()
    return mix_guidance(out, cfg_scale) if mixed else out


def decode_window(model: GPT, prefix: torch.Tensor, seq: torch.Tensor, known: torch.Tensor, steps: int,
                  temperature: float, top_k, top_p, cfg_scale: float, choice_temperature: float,
                  generator) -> torch.Tensor:
    """prefix (B, P); seq (B, L) codes, of which those at `known` (L,) bool are given -> (B, L) with every other
    position decoded in `steps` rounds."""
    B, L = seq.shape
    mask_id = model.cfg.mask_token
    masked = (~known.to(seq.device))[None].expand(B, L).clone()  # (B, L) still to decode
    n_unknown = int(masked[0].sum())
    seq = seq.masked_fill(masked, mask_id)
    for t in range(steps):
        if not masked.any():
            break
        logits = _logits(model, prefix, seq, cfg_scale)  # (B, L, K)
        probs = filter_logits(logits.reshape(B * L, -1), temperature, top_k, top_p)
        drawn = torch.multinomial(probs, 1, generator=generator).reshape(B, L)
        conf = probs.gather(1, drawn.reshape(-1, 1)).reshape(B, L).clamp_min(1e-30).log()
        drawn = torch.where(masked, drawn, seq)  # given and decoded positions keep their codes
        remaining = int(masked[0].sum())
        left = 0 if t == steps - 1 else min(remaining - 1, math.floor(n_unknown * math.cos(math.pi / 2 * (t + 1) / steps)))
        if left <= 0:
            seq, masked = drawn, torch.zeros_like(masked)
            continue
        u = torch.rand(B, L, generator=generator, device=seq.device).clamp(1e-20, 1 - 1e-7)
        noise = -torch.log(-torch.log(u))  # Gumbel
        conf = conf + choice_temperature * (1 - (t + 1) / steps) * noise
        conf = conf.masked_fill(~masked, float("inf"))  # never re-mask a fixed position
        remask = torch.zeros_like(masked).scatter(1, conf.topk(left, dim=1, largest=False).indices, True)
        seq, masked = drawn.masked_fill(remask, mask_id), remask
    return seq


@torch.inference_mode()
def sample_masked(model: GPT, batch: int, grid: Optional[tuple[int, int]] = None,
                  classes: Optional[Sequence[int]] = None, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, cfg_scale: float = 1.0, generator: Optional[torch.Generator] = None,
                  cond: Optional[torch.Tensor] = None, tokens: Optional[torch.Tensor] = None,
                  keep: Optional[torch.Tensor] = None, steps: int = STEPS,
                  choice_temperature: float = CHOICE_TEMPERATURE) -> torch.Tensor:
    """Samples `batch` token grids of size `grid` (default: the window) from a masked model -> (B, H, W) long.
    The arguments mean what they mean for `transformer.sampling.sample`; steps: decoding rounds per window;
    choice_temperature: the initial scale of the confidence noise."""
    if not model.cfg.masked:
        raise ValueError("parallel decoding is for masked (maskgit) models; sample a GPT with transformer.sampling")
    window = wh, ww = model.cfg.window
    H, W = grid = checked_grid(model.cfg, grid, cond)
    device = next(model.parameters()).device
    out = torch.zeros(batch, H, W, dtype=torch.long, device=device) if tokens is None else tokens.clone().to(device)
    known = torch.zeros(grid, dtype=torch.bool) if keep is None else keep.cpu().clone()
    start = prefix_ids(sample_labels(model.cfg, batch, classes), model.cfg).to(device)[:, None]  # (B, 1)
    for top, left in window_origins(grid, window):
        inside = known[top:top + wh, left:left + ww]
        if inside.all():
            continue
        prefix = with_condition(start, None if cond is None else window_seq(cond, top, left, window), model.cfg)
        seq = window_seq(out, top, left, window)
        seq = decode_window(model, prefix, seq, inside.reshape(-1), steps, temperature, top_k, top_p, cfg_scale,
                            choice_temperature, generator)
        out[:, top:top + wh, left:left + ww] = seq.reshape(batch, wh, ww)
        known[top:top + wh, left:left + ww] = True
    return out
