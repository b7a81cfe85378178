"""Autoregressive sampling of token grids: plain (KV-cached) and sliding-window for larger grids.

Both build the same sequence [prefix, t_0, t_1, ...] in raster order and share `filter_logits`. The
sliding-window sampler keeps using its cache while the window stays put and refills it when the
window moves, so with grid == window it performs exactly the computation of `sample`.
"""
from typing import Optional, Sequence

import torch

from transformer.gpt import GPT, KVCache


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> torch.Tensor:
    """logits: (B, K) -> probabilities (B, K) after temperature, top-k and nucleus (top-p) filtering."""
    logits = logits.float() / max(temperature, 1e-8)
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits.softmax(-1)


def prefix_tokens(gpt: GPT, batch: int, classes: Optional[Sequence[int]], device) -> torch.Tensor:
    """(B,) prefix ids: the start token, or one class token per sample (classes cycle when fewer than B)."""
    cfg = gpt.cfg
    if cfg.num_classes == 0:
        if classes is not None:
            raise ValueError("classes given to an unconditional model")
        return torch.full((batch,), cfg.start_token, dtype=torch.long, device=device)
    if classes is None:
        classes = range(cfg.num_classes)
    classes = list(classes)
    return torch.tensor([cfg.class_token(classes[i % len(classes)]) for i in range(batch)], device=device)


class _Stepper:
    """Next-token logits for B sequences, with classifier-free guidance by a doubled batch."""

    def __init__(self, gpt: GPT, prefix: torch.Tensor, cfg_scale: float, use_cache: bool = True):
        self.gpt, self.cfg_scale, self.use_cache = gpt, cfg_scale, use_cache
        self.guided = gpt.cfg.num_classes > 0 and cfg_scale != 1.0
        if self.guided:
            prefix = torch.cat([prefix, torch.full_like(prefix, gpt.cfg.null_class_token)])
        self.prefix = prefix  # (B or 2B,)
        p = next(gpt.parameters())
        self.cache = KVCache(gpt.cfg, prefix.shape[0], p.device, p.dtype) if use_cache else None
        self.key = None  # which context the cache holds (the window's corner)

    def logits(self, context: torch.Tensor, key=None) -> torch.Tensor:
        """context: (B, p) tokens preceding the one to predict -> (B, K) logits for it. Continues the
        cache when it holds exactly these tokens but the last (same key), else refills it."""
        if self.guided:
            context = torch.cat([context, context])
        seq = torch.cat([self.prefix[:, None], context], 1)  # (B', p+1)
        if not self.use_cache:
            out = self.gpt(seq)[:, -1]
        elif key == self.key and self.cache.length == seq.shape[1] - 1:
            out = self.gpt.forward_cached(seq[:, -1:], self.cache, seq.shape[1] - 1)
        else:
            out = self.gpt.forward_cached(seq, self.cache, 0)
            self.key = key
        if self.guided:
            cond, uncond = out.chunk(2)
            out = uncond + self.cfg_scale * (cond - uncond)
        return out


@torch.inference_mode()
def sample(gpt: GPT, batch: int, classes: Optional[Sequence[int]] = None, temperature: float = 1.0,
           top_k: Optional[int] = None, top_p: Optional[float] = None, cfg_scale: float = 1.0,
           generator: Optional[torch.Generator] = None, tokens: Optional[torch.Tensor] = None, start: int = 0,
           use_cache: bool = True) -> torch.Tensor:
    """Samples block_size tokens per sequence in raster order -> (B, block_size) long.

    tokens/start: a (B, block_size) tensor whose first `start` tokens are kept (half-image completion).
    use_cache=False recomputes the whole prefix for every token (the reference, and the speed baseline)."""
    device = next(gpt.parameters()).device
    n = gpt.cfg.block_size
    out = torch.zeros(batch, n, dtype=torch.long, device=device) if tokens is None else tokens.clone().to(device)
    step = _Stepper(gpt, prefix_tokens(gpt, batch, classes, device), cfg_scale, use_cache)
    for p in range(start, n):
        probs = filter_logits(step.logits(out[:, :p]), temperature, top_k, top_p)
        out[:, p] = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return out


def window_origin(i: int, j: int, grid: tuple[int, int], window: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the window used for grid position (i, j): centred on it where possible,
    clamped at the borders, so that the position is always inside."""
    (H, W), (wh, ww) = grid, window
    return min(max(i - wh // 2, 0), H - wh), min(max(j - ww // 2, 0), W - ww)


@torch.inference_mode()
def sliding_window_sample(gpt: GPT, batch: int, grid: tuple[int, int], window: tuple[int, int],
                          classes: Optional[Sequence[int]] = None, temperature: float = 1.0,
                          top_k: Optional[int] = None, top_p: Optional[float] = None, cfg_scale: float = 1.0,
                          generator: Optional[torch.Generator] = None, tokens: Optional[torch.Tensor] = None,
                          start: int = 0, use_cache: bool = True) -> torch.Tensor:
    """Samples an H x W token grid with a model trained on wh x ww windows -> (B, H, W) long.

    Each position is predicted from the tokens before it, in raster order, inside its window
    (`window_origin`): the paper's scheme for images larger than the training crops. tokens/start as in
    `sample`, with start counted in grid raster order. use_cache=False runs the whole window context for
    every token (the reference scheme, and the speed baseline)."""
    (H, W), (wh, ww) = grid, window
    if wh * ww != gpt.cfg.block_size:
        raise ValueError(f"window {wh}x{ww} does not match the model's block_size {gpt.cfg.block_size}")
    if H < wh or W < ww:
        raise ValueError(f"grid {H}x{W} is smaller than the window {wh}x{ww}")
    device = next(gpt.parameters()).device
    out = torch.zeros(batch, H, W, dtype=torch.long, device=device) if tokens is None else tokens.clone().to(device)
    step = _Stepper(gpt, prefix_tokens(gpt, batch, classes, device), cfg_scale, use_cache)
    for pos in range(start, H * W):
        i, j = divmod(pos, W)
        top, left = window_origin(i, j, grid, window)
        li, lj = i - top, j - left
        ctx = out[:, top:top + wh, left:left + ww].reshape(batch, -1)[:, :li * ww + lj]  # (B, p) before (i, j)
        probs = filter_logits(step.logits(ctx, key=(top, left)), temperature, top_k, top_p)
        out[:, i, j] = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return out


def sample_grid(gpt: GPT, batch: int, grid: tuple[int, int], window: tuple[int, int],
                classes: Optional[Sequence[int]] = None, tokens: Optional[torch.Tensor] = None, start: int = 0,
                use_cache: bool = True, **kw) -> torch.Tensor:
    """(B, H, W) tokens: plain sampling when the grid is the trained window, else the sliding window.
    tokens: an optional (B, H, W) grid whose first `start` raster positions are kept; kw: sampling options."""
    grid, window = tuple(grid), tuple(window)
    if grid == window:
        flat = None if tokens is None else tokens.reshape(batch, -1)
        return sample(gpt, batch, classes, tokens=flat, start=start, use_cache=use_cache, **kw).reshape(batch, *grid)
    return sliding_window_sample(gpt, batch, grid, window, classes, tokens=tokens, start=start, use_cache=use_cache,
                                 **kw)
