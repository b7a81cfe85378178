"""A tokenizer trained on crops, run on larger images: overlapping tiles of the crop's size.

A VQGAN trained on crops learns the GroupNorm statistics of a crop; run over a whole canvas four times the crop's
side, its normalisation takes statistics over far more (and more varied) content, and the reconstruction loses
over 7 dB (the scenes tokenizer on its held-out 128x128 canvases: 24.4 dB in one pass, 31.9 dB tiled, 31.2 dB
on 32x32 crops). So images larger than the tile are encoded tile by tile, at half-tile strides, each token taken
from the tile whose centre is nearest to it, and decoded tile by tile, the overlapping tiles blended with tent
weights (no seams; tiles go through the network in batches of TILE_PIXELS pixels, so a megapixel canvas needs
the memory of a few crops)."""
from typing import Callable

import torch


def tile_starts(n: int, t: int, stride: int) -> list[int]:
    """Starts of tiles of size t covering n at `stride`, the last flush with the border."""
    s = list(range(0, max(1, n - t + 1), stride))
    return s if s[-1] >= n - t else s + [n - t]


def _nearest(n: int, t: int, starts: list[int]) -> list[int]:
    """For each of n positions, the start of the tile (of size t) whose centre is nearest to it."""
    return [min(starts, key=lambda s: abs(k + 0.5 - (s + t / 2))) for k in range(n)]


TILE_PIXELS = 2 ** 16  # pixels per batched call: 64 tiles of 32x32 (at batch 1), or one of 256x256


def _batched(fn: Callable, tiles: list, take: Callable, B: int, pixels: int) -> list:
    """fn run over take(tile) for every tile, several tiles stacked along the batch per call (at most TILE_PIXELS
    pixels), -> [fn's output for each tile]."""
    per = max(1, TILE_PIXELS // (B * pixels))
    out = []
    for k in range(0, len(tiles), per):
        chunk = tiles[k:k + per]
        out += list(fn(torch.cat([take(t) for t in chunk])).split(B))
    return out


@torch.no_grad()
def encode_tiled(encode: Callable, x: torch.Tensor, tile: int, f: int) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, H/f, W/f) code indices, `encode` ((B, C, th, tw) -> (B, th/f, tw/f)) run on overlapping
    tiles (at most tile x tile), each token from the tile whose centre is nearest to it."""
    B, _, H, W = x.shape
    h, w = H // f, W // f
    Th, Tw = min(tile // f, h), min(tile // f, w)  # tile sides in tokens (a side shorter than a tile: one tile)
    rows, cols = tile_starts(h, Th, max(1, Th // 2)), tile_starts(w, Tw, max(1, Tw // 2))
    near_r, near_c = torch.tensor(_nearest(h, Th, rows)), torch.tensor(_nearest(w, Tw, cols))
    tiles = [(r, c) for r in rows for c in cols]
    codes = _batched(encode, tiles, lambda t: x[:, :, t[0] * f:(t[0] + Th) * f, t[1] * f:(t[1] + Tw) * f], B,
                     Th * Tw * f * f)  # [(B, Th, Tw)]
    out = torch.zeros(B, h, w, dtype=torch.long, device=x.device)
    for (r, c), code in zip(tiles, codes):
        mine = ((near_r[r:r + Th, None] == r) & (near_c[None, c:c + Tw] == c)).to(x.device)  # nearest this tile
        out[:, r:r + Th, c:c + Tw][:, mine] = code[:, mine]
    return out


def _tent(n: int) -> torch.Tensor:
    """(n,) weights rising from the tile's borders to its centre, all > 0."""
    k = torch.arange(n)
    return torch.minimum(k + 0.5, n - k - 0.5) / (n / 2)


@torch.no_grad()
def decode_tiled(decode: Callable, indices: torch.Tensor, tile: int, f: int) -> torch.Tensor:
    """indices: (B, h, w) -> (B, C, h*f, w*f) images, `decode` ((B, th, tw) codes -> (B, C, th*f, tw*f)) run on
    overlapping tiles (at most tile x tile) at half-tile strides, blended with tent weights."""
    B, h, w = indices.shape
    Th, Tw = min(tile // f, h), min(tile // f, w)
    weight = (_tent(Th * f)[:, None] * _tent(Tw * f)[None, :]).to(indices.device)  # (th, tw)
    tiles = [(r, c) for r in tile_starts(h, Th, max(1, Th // 2)) for c in tile_starts(w, Tw, max(1, Tw // 2))]
    images = _batched(decode, tiles, lambda t: indices[:, t[0]:t[0] + Th, t[1]:t[1] + Tw], B, Th * Tw * f * f)
    out = torch.zeros(B, images[0].shape[1], h * f, w * f, device=indices.device)
    total = torch.zeros(h * f, w * f, device=indices.device)
    for (r, c), img in zip(tiles, images):
        out[:, :, r * f:(r + Th) * f, c * f:(c + Tw) * f] += img.float() * weight
        total[r * f:(r + Th) * f, c * f:(c + Tw) * f] += weight
    return out / total
