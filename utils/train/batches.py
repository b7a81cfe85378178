"""The order of the training batches, epoch after epoch: a seeded permutation per epoch, sharded across ranks, that a
resumed run continues where it stopped."""
import math

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    """A seeded per-epoch permutation, sharded across ranks, that can start mid-epoch.

    Each rank gets len // world indices per epoch (the same count everywhere, a few dropped), and the
    order depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = n // world if shuffle else math.ceil((n - rank) / world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Start `epoch` at its `start`-th index of this rank's share."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.per_rank * self.world]
        return perm[self.rank::self.world].tolist()

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


class Batches:
    """Full batches of `loader` (a DataLoader or a BatchSampler over `sampler`), one epoch after another, from batch
    `batch` of epoch `epoch` on; `epoch` and `batch` say where the next one comes from, for the checkpoint. At each
    new epoch the sampler and the `datasets` (their seeded augmentation) move to it."""

    def __init__(self, loader, sampler: ResumableSampler, batch_size: int, epoch: int = 0, batch: int = 0,
                 datasets=()):
        self.loader, self.sampler, self.datasets = loader, sampler, datasets
        self.epoch, self.batch = epoch, batch
        self._start(batch * batch_size)

    def _start(self, first: int) -> None:
        self.sampler.set_epoch(self.epoch, first)
        for ds in self.datasets:
            ds.set_epoch(self.epoch)
        self._it = iter(self.loader)

    def __iter__(self):
        return self

    def __next__(self):
        try:
            item = next(self._it)
        except StopIteration:  # the epoch is over (a tail shorter than a batch is dropped)
            self.epoch, self.batch = self.epoch + 1, 0
            self._start(0)
            item = next(self._it)
        self.batch += 1
        return item
