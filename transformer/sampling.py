"""Autoregressive sampling of token grids: one sampler, with the sliding window for grids larger than the model's.

`sample` draws an H x W grid in raster order. Each position is predicted from the tokens before it inside
the model's window, placed by `window_origin`: centred on the position where possible, clamped at the
borders (the paper's scheme for images larger than the training crops), or moved across in strides of half
the window. With grid == window the window never moves and this is plain sampling of the whole sequence. The
KV cache is kept while the window stays put and refilled when it moves, so the cache changes nothing but
speed; the centred window moves with every token of a row, the strided one every half window.
"""
from typing import Optional, Sequence

import torch

from transformer.gpt import GPT, KVCache
from transformer.sequences import guided, mix_guidance, prefix_ids, sample_labels, window_seq, with_condition, \
    with_null_class


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


class _Stepper:
    """Next-token logits for B sequences, with classifier-free guidance by a doubled batch."""

    def __init__(self, gpt: GPT, batch: int, cfg_scale: float, use_cache: bool = True):
        self.gpt, self.cfg_scale, self.use_cache = gpt, cfg_scale, use_cache
        self.guided = guided(gpt.cfg, cfg_scale)
        p = next(gpt.parameters())
        rows = 2 * batch if self.guided else batch
        self.cache = KVCache(gpt.cfg, rows, p.device, p.dtype) if use_cache else None
        self.key = None  # which context the cache holds (the window's corner)

    def logits(self, prefix: torch.Tensor, context: torch.Tensor, key) -> torch.Tensor:
        """prefix: (B, P) what precedes the codes (a start or class token, after the window's condition codes for a
        conditional model); context: (B, p) the codes preceding the one to predict -> (B, K) logits for it.
        Continues the cache when it holds exactly these tokens but the last (same key), else refills it."""
        if self.guided:
            prefix, context = with_null_class(prefix, self.gpt.cfg), torch.cat([context, context])
        seq = torch.cat([prefix, context], 1)  # (B', P+p)
        if not self.use_cache:
            out = self.gpt(seq)[0][:, -1]
        elif key == self.key and self.cache.length == seq.shape[1] - 1:
            out = self.gpt.forward_cached(seq[:, -1:], self.cache, seq.shape[1] - 1)
        else:
            out = self.gpt.forward_cached(seq, self.cache, 0)
            self.key = key
        return mix_guidance(out, self.cfg_scale) if self.guided else out


# where the window sits for each token: "centred" on it (the paper's), or "strided": moved across in strides of half
# the window's width, so that it stays put (and the KV cache serves) for half a window of tokens in a row
PLACEMENTS = ("centred", "strided")


def window_origin(i: int, j: int, grid: tuple[int, int], window: tuple[int, int],
                  placement: str = "centred") -> tuple[int, int]:
    """Top-left corner of the window used for grid position (i, j), clamped at the borders, so that the position is
    always inside. centred: centred on it where possible; strided: the centred corner rounded across to a multiple
    of half the window's width (the position lies between a quarter and three quarters of the way across)."""
    (H, W), (wh, ww) = grid, window
    left = j - ww // 2
    if placement == "strided":
        s = max(1, ww // 2)
        left = s * ((left + s // 2) // s)
    elif placement != "centred":
        raise ValueError(f"unknown window placement {placement!r}; choose from {', '.join(PLACEMENTS)}")
    return min(max(i - wh // 2, 0), H - wh), min(max(left, 0), W - ww)


def raster_prefix(grid: tuple[int, int], n: int) -> torch.Tensor:
    """(H, W) bool: True on the first n positions in raster order (what a completion keeps)."""
    return (torch.arange(grid[0] * grid[1]) < n).reshape(grid)


def kept_rows(grid: tuple[int, int]) -> int:
    """The token rows a completion keeps unless told otherwise: the top half."""
    return grid[0] // 2


def top_half(grid: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool: what a completion keeps by default, the top kept_rows(grid) rows."""
    return raster_prefix(grid, kept_rows(grid) * grid[1])


def centre_hole(grid: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool: what a free-form inpainting keeps by default, all but a centre square of half the grid's height."""
    return centre_keep(grid, max(1, grid[0] // 2))


def centre_keep(grid: tuple[int, int], side: int) -> torch.Tensor:
    """(H, W) bool: False on the centre side x side positions (what an inpainting re-samples), True elsewhere."""
    keep = torch.ones(grid, dtype=torch.bool)
    top, left = (grid[0] - side) // 2, (grid[1] - side) // 2
    keep[top:top + side, left:left + side] = False
    return keep


def checked_grid(cfg, grid, cond) -> tuple[int, int]:
    """The grid a sampler is asked for (default: the window), checked against the model's window and condition."""
    H, W = grid = tuple(grid) if grid is not None else cfg.window
    wh, ww = cfg.window
    if H < wh or W < ww:
        raise ValueError(f"grid {H}x{W} is smaller than the window {wh}x{ww}")
    if (cond is not None) != (cfg.cond_codebook_size > 0):
        raise ValueError("a conditional model needs cond, and only a conditional model takes it")
    return grid


@torch.inference_mode()
def sample(gpt: GPT, batch: int, grid: Optional[tuple[int, int]] = None, classes: Optional[Sequence[int]] = None,
           temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
           cfg_scale: float = 1.0, generator: Optional[torch.Generator] = None, cond: Optional[torch.Tensor] = None,
           tokens: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None,
           use_cache: bool = True, placement: str = "centred") -> torch.Tensor:
    """Samples `batch` token grids of size `grid` (default: the model's window) -> (B, H, W) long.

    classes: class ids for a class-conditional model (cycled; None cycles through all of them).
    cond: (B, H, W) condition codes for a conditional model, windowed at the same positions as the image.
    tokens/keep: a (B, H, W) grid and a (H, W) bool mask of the positions to keep from it (completion,
    out-painting); the others are sampled in raster order, each from the tokens before it in its window.
    cfg_scale: classifier-free guidance. use_cache=False runs the whole window context for every token
    (the reference scheme, and the speed baseline). placement: where the window sits (PLACEMENTS)."""
    window = wh, ww = gpt.cfg.window
    H, W = grid = checked_grid(gpt.cfg, grid, cond)
    device = next(gpt.parameters()).device
    out = torch.zeros(batch, H, W, dtype=torch.long, device=device) if tokens is None else tokens.clone().to(device)
    keep = torch.zeros(grid, dtype=torch.bool) if keep is None else keep.cpu()
    start = prefix_ids(sample_labels(gpt.cfg, batch, classes), gpt.cfg).to(device)[:, None]  # (B, 1)
    step = _Stepper(gpt, batch, cfg_scale, use_cache)
    for pos in range(H * W):
        i, j = divmod(pos, W)
        if keep[i, j]:
            continue
        top, left = window_origin(i, j, grid, window, placement)
        li, lj = i - top, j - left
        ctx = window_seq(out, top, left, window)[:, :li * ww + lj]  # (B, p) before (i, j)
        prefix = with_condition(start, None if cond is None else window_seq(cond, top, left, window), gpt.cfg)
        probs = filter_logits(step.logits(prefix, ctx, key=(top, left)), temperature, top_k, top_p)
        out[:, i, j] = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return out


@torch.inference_mode()
def likeliest_classes(gpt: GPT, tokens: torch.Tensor, kept: int) -> list[int]:
    """For a class-conditional model completing grids whose class is not given: the class under which the first
    `kept` tokens (raster order, inside the top-left window) of each grid are likeliest. tokens: (B, H, W)."""
    cfg = gpt.cfg
    wh, ww = cfg.window
    seq = tokens[:, :wh, :ww].reshape(tokens.shape[0], -1)[:, :max(1, min(kept, wh * ww))].long()  # (B, L)
    scores = []
    for c in range(cfg.num_classes):
        inp = torch.cat([torch.full_like(seq[:, :1], cfg.class_token(c)), seq[:, :-1]], 1)
        logp = gpt(inp.to(next(gpt.parameters()).device))[0].float().log_softmax(-1)  # (B, L, K)
        scores.append(logp.gather(-1, seq.to(logp.device)[..., None])[..., 0].sum(1))
    return torch.stack(scores, 1).argmax(1).tolist()


@torch.inference_mode()
def decode_images(vq, tokens: torch.Tensor) -> torch.Tensor:
    """tokens: (B, h, w) code indices -> (B, C, H, W) float images in [0, 1], on the CPU."""
    return ((vq.decode_indices(tokens.long()).float().clamp(-1, 1) + 1) / 2).cpu()
