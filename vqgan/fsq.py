"""Finite scalar quantization (Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple", ICLR 2024).

The latent has one channel per entry of `levels`. Each channel is bounded (a shifted tanh) to an interval
holding exactly L integers, rounded to the nearest with a straight-through gradient, and scaled back to
[-1, 1]. The code of a position is its tuple of rounded values; its index is the mixed-radix number of the
tuple (digit d in 0..L_d-1, the first channel least significant), so the prod(levels) codes are all
reachable, none can die, and there is no codebook to learn: no codebook loss, no restart. The interface is
the `Codebook`'s (indices, lookup, usage counters), so the VQGAN, stage 2 and every tool use it unchanged.
"""
import math

import torch

from vqgan.codebook import UsageCounts, fold_counts


class FSQ(UsageCounts):
    def __init__(self, levels: list[int], eps: float = 1e-3):
        super().__init__(math.prod(levels) if levels else 1)
        if len(levels) == 0 or min(levels) < 2:
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {levels}")
        self.levels = list(levels)
        self.codebook_size, self.codebook_dim = math.prod(levels), len(levels)
        self.eps = eps
        L = torch.tensor(levels, dtype=torch.float64)
        self.register_buffer("_levels", L.float(), persistent=False)
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1] + levels[:-1]), 0), persistent=False)  # (d,)
        # an even L has no centre integer: bound to (-L/2, L/2 - 1) by shifting the tanh by half a step
        self.register_buffer("_half", ((L - 1) * (1 + eps) / 2).float(), persistent=False)
        self.register_buffer("_offset", torch.where(L % 2 == 0, 0.5, 0.0).float(), persistent=False)
        self.register_buffer("_shift", torch.atanh(self._offset.double() / self._half.double()).float(),
                             persistent=False)
        self.register_buffer("_width", (L // 2).float(), persistent=False)  # scales the integers into [-1, 1]

    def _channels_last(self, z: torch.Tensor) -> torch.Tensor:
        return z.float().permute(0, 2, 3, 1)  # (B, h, w, d)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., d) fp32 -> the rounded integers (..., d) as floats, value round(bound(z)), gradient bound'(z)."""
        bounded = torch.tanh(z + self._shift) * self._half - self._offset
        return bounded + (torch.round(bounded) - bounded).detach()  # straight-through rounding

    def _to_index(self, q: torch.Tensor) -> torch.Tensor:
        """q: (..., d) integers in [-L//2, ...] -> (...) long mixed-radix indices."""
        digits = (q + self._width).round().long()  # 0..L-1
        return (digits * self._basis).sum(-1)

    @torch.no_grad()
    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, d, h, w) -> (B, h, w) long code indices."""
        with torch.autocast(z.device.type, enabled=False):
            return self._to_index(self.quantize(self._channels_last(z)))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: (B, h, w) long -> (B, d, h, w) fp32 codes in [-1, 1]."""
        digits = (indices[..., None] // self._basis) % self._levels.long()  # (B, h, w, d)
        return ((digits.float() - self._width) / self._width).permute(0, 3, 1, 2).contiguous()

    def codes(self) -> torch.Tensor:
        """Every code, (K, d) fp32 in index order."""
        return self.lookup(torch.arange(self.codebook_size, device=self._basis.device)[None, None])[0, :, 0].t()

    def forward(self, z: torch.Tensor):
        """z: (B, d, h, w) -> codes (B, d, h, w) fp32 with straight-through gradient, a zero loss (FSQ has no
        auxiliary loss), indices (B, h, w)."""
        with torch.autocast(z.device.type, enabled=False):
            q = self.quantize(self._channels_last(z))  # (B, h, w, d)
            indices = self._to_index(q.detach())
            if self.training:
                self._pending_counts += torch.bincount(indices.reshape(-1), minlength=self.codebook_size).float()
            z_q = (q / self._width).permute(0, 3, 1, 2).contiguous()
        return z_q, z_q.new_zeros(()), indices

    @torch.no_grad()
    def step_update(self) -> int:
        """Fold this optimizer step's code counts into the usage statistics (all-reduced); nothing to restart."""
        fold_counts(self._pending_counts, self.window_counts)
        return 0

