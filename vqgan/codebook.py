"""Vector quantizer with the official behaviour available, and the fixes that keep a codebook alive.

Compared with the official `VectorQuantizer2`:
- beta weights the commitment term ||z - sg(e)||^2, not the codebook term;
- optional l2-normalised codes (cosine-similarity lookup), which with a small `codebook_dim` keeps
  most codes in use;
- optional dead-code restart from current encoder outputs;
- nearest-code search in fp32 and in chunks, so a large book never materialises a (N, K) matrix;
- usage counters (buffers, so they are checkpointed and never counted as parameters).
With `l2_norm=False, restart_after=0` the lookup is the official one, so official weights behave identically.
"""
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class UsageCounts(nn.Module):
    """Code counts since the last reset (`window_counts`, a buffer: checkpointed, never a parameter), the usage
    figures drawn from them, and this optimizer step's counts not yet folded in."""

    def __init__(self, codebook_size: int):
        super().__init__()
        self.register_buffer("window_counts", torch.zeros(codebook_size))
        self.register_buffer("_pending_counts", torch.zeros(codebook_size), persistent=False)

    @torch.no_grad()
    def reset_usage(self) -> None:
        """Forget the usage history (a run that starts from these weights counts afresh)."""
        self.window_counts.zero_()

    @torch.no_grad()
    def usage_stats(self, reset: bool = True) -> tuple[float, float]:
        """(fraction of codes used, perplexity of the code distribution) since the last reset."""
        used, ppl = usage_from_counts(self.window_counts)
        if reset:
            self.window_counts.zero_()
        return used, ppl


class Codebook(UsageCounts):
    def __init__(self, codebook_size: int, codebook_dim: int, beta: float = 0.25, l2_norm: bool = False,
                 restart_after: int = 0, chunk_elements: int = 1 << 22):
        super().__init__(codebook_size)
        self.codebook_size, self.codebook_dim = codebook_size, codebook_dim
        self.beta, self.l2_norm, self.restart_after = beta, l2_norm, restart_after
        self.chunk_elements = chunk_elements  # (rows x codes) per distance block: 4M floats = 16 MiB
        self.embedding = nn.Embedding(codebook_size, codebook_dim)
        if l2_norm:
            nn.init.normal_(self.embedding.weight)  # direction is all that matters; normal gives uniform directions
        else:
            nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)  # official init
        # optimizer steps since each code was last chosen (the counts are all-reduced across ranks in step_update)
        self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))
        self._last_z = None  # latest training latents, the pool dead codes are re-seeded from

    def codes(self) -> torch.Tensor:
        """The code vectors actually used for lookup: (K, D) fp32, unit norm in l2 mode."""
        e = self.embedding.weight.float()
        return F.normalize(e, dim=1) if self.l2_norm else e

    @torch.no_grad()
    def nearest(self, z_flat: torch.Tensor, codes: torch.Tensor = None) -> torch.Tensor:
        """z_flat: (N, D) fp32 (already normalised in l2 mode) -> (N,) long index of the nearest code.

        ||z - e||^2 = ||z||^2 + ||e||^2 - 2 z.e; ||z||^2 is constant per row, so the argmin needs only
        ||e||^2 - 2 z.e, computed block by block of rows so that memory stays at chunk_elements floats."""
        e = self.codes() if codes is None else codes
        e_sq = e.pow(2).sum(1)  # (K,)
        N = z_flat.shape[0]
        out = torch.empty(N, dtype=torch.long, device=z_flat.device)
        rows = min(N, max(1, self.chunk_elements // self.codebook_size))
        block = torch.empty(rows, self.codebook_size, dtype=e.dtype, device=e.device)  # reused: one allocation
        for s in range(0, N, rows):
            n = min(rows, N - s)
            d = torch.addmm(e_sq, z_flat[s:s + n], e.t(), alpha=-2.0, out=block[:n])  # (n, K)
            torch.argmin(d, 1, out=out[s:s + n])
        return out

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: (B, h, w) long -> (B, D, h, w) fp32 code vectors."""
        return F.embedding(indices, self.codes()).permute(0, 3, 1, 2).contiguous()  # (B, D, h, w)

    def flatten(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, D, h, w) -> (B*h*w, D) fp32 vectors as the lookup sees them (unit norm in l2 mode)."""
        z = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, D)
        return F.normalize(z, dim=1) if self.l2_norm else z

    @torch.no_grad()
    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, D, h, w) -> (B, h, w) long index of the nearest code."""
        with torch.autocast(z.device.type, enabled=False):
            B, _, h, w = z.shape
            return self.nearest(self.flatten(z)).reshape(B, h, w)

    def forward(self, z: torch.Tensor):
        """z: (B, D, h, w) -> z_q (B, D, h, w) fp32 with straight-through gradient, loss (scalar), indices (B, h, w)."""
        with torch.autocast(z.device.type, enabled=False):
            B, D, h, w = z.shape
            z = self.flatten(z)  # (B*h*w, D)
            codes = self.codes()
            indices = self.nearest(z.detach(), codes.detach())
            z_q = F.embedding(indices, codes)  # (B*h*w, D), differentiable w.r.t. the codebook
            # codebook term pulls codes to encoder outputs; beta-weighted commitment term pulls outputs to codes
            loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
            # straight-through: the value is exactly z_q (z - sg(z) is exactly zero), the gradient is the identity
            z_st = z_q.detach() + (z - z.detach())
            if self.training:
                self._pending_counts += torch.bincount(indices, minlength=self.codebook_size).float()
                self._last_z = z.detach()
            z_st = z_st.reshape(B, h, w, D).permute(0, 3, 1, 2).contiguous()  # (B, D, h, w)
        return z_st, loss, indices.reshape(B, h, w)

    @torch.no_grad()
    def step_update(self) -> int:
        """Fold this optimizer step's code counts into the usage statistics and restart dead codes.

        Call once per optimizer step, on every rank: counts are all-reduced and replacement codes are
        broadcast from rank 0, so the codebook stays identical across ranks. Returns how many codes
        were restarted."""
        counts = fold_counts(self._pending_counts, self.window_counts)
        distributed = dist.is_available() and dist.is_initialized()
        self.unused_steps += 1
        self.unused_steps.masked_fill_(counts > 0, 0)
        if self.restart_after <= 0 or self._last_z is None:
            return 0
        dead = self.unused_steps >= self.restart_after  # (K,) bool, identical on every rank
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        pool = self._last_z
        pick = torch.randint(0, pool.shape[0], (n_dead,), device=pool.device)
        new = pool[pick].to(self.embedding.weight.dtype)  # (n_dead, D)
        if distributed:
            dist.broadcast(new, src=0)
        self.embedding.weight[dead] = new
        self.unused_steps[dead] = 0
        return n_dead

    @torch.no_grad()
    def reset_usage(self) -> None:
        super().reset_usage()
        self.unused_steps.zero_()


@torch.no_grad()
def fold_counts(pending: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Adds the counts of this optimizer step, `pending` (all-reduced across ranks), into `window`, zeroes `pending`
    and returns the step's counts."""
    counts = pending.clone()
    pending.zero_()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    window += counts
    return counts


def usage_from_counts(counts: torch.Tensor) -> tuple[float, float]:
    """counts: (K,) code counts -> (fraction of codes used at least once, perplexity exp(H(p)))."""
    counts = counts.double()
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    p = counts / total
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return (counts > 0).double().mean().item(), math.exp(entropy.item())
