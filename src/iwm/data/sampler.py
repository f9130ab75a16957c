"""Epoch-seeded sampling that can start mid-epoch, so a resumed run sees the same data order.

The order is defined for the *global* batch: global batch k is ``perm[k*G:(k+1)*G]`` with
G = batch x world, and process r takes its r-th slice. So one process and N processes with the
same global batch train on the same images at every step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from ..config import ConfigError


class ResumableSampler(Sampler[int]):
    def __init__(self, n: int, batch: int, seed: int = 0, rank: int = 0, world: int = 1):
        if n < batch * world:
            raise ConfigError(f"data.batch_size: {n} images cannot fill one global batch of {batch * world}; "
                              "lower data.batch_size")
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self.epoch, self.start = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch * self.world)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def global_batches(self) -> Iterator[torch.Tensor]:
        """The epoch's global batches from ``start_batch`` on: (batch x world,) indices, every
        process's slice in rank order (the device-side data path draws crops for all of them)."""
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        glob = self.batch * self.world
        for k in range(self.start, self.batches_per_epoch):
            yield perm[k * glob:(k + 1) * glob]

    def __iter__(self) -> Iterator[int]:
        for glob in self.global_batches():
            yield from glob[self.rank * self.batch:(self.rank + 1) * self.batch].tolist()

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start) * self.batch
