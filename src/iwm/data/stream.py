"""Pretraining's reader of shards (tar files; row ranges of a Hugging Face dataset): each process
and each of its loader workers streams its own shards in order, through a seeded shuffle buffer,
and cuts whole batches.

The layout of an epoch, all of it a function of (seed, epoch) and the shard counts:

- the shards are put in a seeded order; with S = processes x workers per process streams, stream
  g takes shards g, g + S, g + 2S, ... of that order, so no sample is read twice in an epoch;
- every stream yields the same number Q of batches, the most that the S shards a stream gets
  least of can fill in any order (the smallest shards counted). A process therefore makes
  workers x Q steps an epoch, every epoch, the same on every rank. What the streams hold beyond
  is the epoch's remainder, left out (different samples each epoch): ``left_out`` says how many;
- worker w of a process reads stream (w + first batch) mod workers, because the loader takes
  batches from its workers in turn, always starting with worker 0: batch j of the epoch is then
  stream j mod workers's, whatever batch the epoch starts from.

**Exact resume.** A run resumed at step k of an epoch skips, in each stream, the batches it
gave before k: it reads their samples through the same buffer without decoding them, so the
batches after k are those of an uninterrupted run. The layout depends on the number of
processes and of workers, so a resumed run must keep both (``data.num_workers``).

**Bad input.** A sample whose image is missing or does not decode, or whose label is not a
whole number, gives its place in the batch to a copy of another view of the same batch, and is
counted (the third item of each batch). A shard that breaks stops the run in one line
(``data.bad_shards=stop``, the default) or is read no further (``skip``, logged); a stream left
short by a skipped shard reads its shards again from the start to fill its quota.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from typing import Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..config import ConfigError
from .shards import ShardError, decode, image_and_label, samples
from .views import sample_generator, target_view

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, int]  # uint8 views (B, 3, S, S), labels (B,), bad samples


class ShardStream(IterableDataset):
    """This process's batches of an epoch, laid out as the module's text says; it is its own
    sampler (``batches_per_epoch``, ``set_epoch(epoch, start_batch)``) for the training loop."""

    def __init__(self, shards: list[str], counts: list[int], size: int, batch: int, seed: int = 0, rank: int = 0,
                 world: int = 1, workers: int = 0, buffer: int = 1000, bad_shards: str = "stop",
                 scale: tuple[float, float] = (0.3, 1.0), hflip: bool = True,
                 read: Callable[[str], Iterator[dict]] = samples,
                 parse: Callable[[dict], tuple[bytes | None, int | None]] = image_and_label):
        self.shards, self.counts = list(shards), list(counts)
        self.size, self.batch, self.seed, self.rank, self.world = size, batch, seed, rank, world
        self.per_rank = max(1, workers)  # streams a process reads: one per worker, or one in the process
        self.buffer, self.bad_shards, self.scale, self.hflip, self.read = buffer, bad_shards, scale, hflip, read
        self.parse = parse  # a sample -> (image bytes, label): None where missing or malformed
        self.streams = world * self.per_rank
        if len(shards) < self.streams:
            raise ConfigError(f"data.path: {len(shards)} shards cannot feed {world} processes x {self.per_rank} "
                              f"loader workers ({self.streams} streams, each needs a shard of its own); write more, "
                              f"smaller shards (iwm data pack --shard-size) or lower data.num_workers")
        least = sum(sorted(counts)[:len(shards) // self.streams])
        self.quota = least // batch  # batches every stream gives an epoch
        if self.quota == 0:
            raise ConfigError(f"data.batch_size: {batch} is more than a stream's shards hold ({least} samples in the "
                              f"{len(shards) // self.streams} smallest shards); lower it, or write fewer, larger shards")
        self.epoch, self.start = 0, 0

    # the sampler's part, as the training loop drives it (iwm.data.sampler.ResumableSampler)
    @property
    def batches_per_epoch(self) -> int:
        return self.per_rank * self.quota

    @property
    def left_out(self) -> int:
        """Samples an epoch leaves out: what the streams hold beyond their quota."""
        return sum(self.counts) - self.streams * self.quota * self.batch

    def set_epoch(self, epoch: int, start_batch: int | None = None) -> None:
        self.epoch = epoch
        if start_batch is not None:
            self.start = start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    # ------------------------------------------------------------------------------------------

    def stream_shards(self, g: int) -> list[str]:
        """The shards stream ``g`` (of all processes') reads this epoch, in order."""
        order = list(range(len(self.shards)))
        random.Random(self._seed(-1)).shuffle(order)
        return [self.shards[i] for i in order[g::self.streams]]

    def _seed(self, g: int) -> int:
        return (self.seed * 1_000_003 + self.epoch) * 1_000_033 + g

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if n != self.per_rank:
            raise RuntimeError(f"the stream was laid out for {self.per_rank} workers, read by {n}")
        t = (w + self.start) % self.per_rank  # this worker's stream of the process (see the module's text)
        g = self.rank * self.per_rank + t
        skip = max(0, -(-(self.start - t) // self.per_rank))  # its batches before the epoch's start
        raw = self._shuffled(g)
        for _ in range(skip * self.batch):
            next(raw)
        for q in range(skip, self.quota):
            yield self._cut([next(raw) for _ in range(self.batch)], (q * self.per_rank + t) * self.batch)

    def _shuffled(self, g: int) -> Iterator[dict]:
        """Stream ``g``'s samples through its seeded buffer; read again from its first shard
        (the buffer's draws going on) should a skipped shard leave it short of its quota."""
        rng = random.Random(self._seed(g))
        for read in itertools.count(1):
            buf, given = [], 0
            for sample in self._samples(self.stream_shards(g)):
                if len(buf) < self.buffer:
                    buf.append(sample)
                    continue
                k = rng.randrange(len(buf))
                buf[k], sample = sample, buf[k]
                given += 1
                yield sample
            rng.shuffle(buf)
            given += len(buf)
            yield from buf
            if given == 0:
                raise ShardError(f"data.path: no readable sample in the shards of stream {g}")
            log.warning("stream %d of epoch %d reads its shards again (read %d) to fill its quota", g, self.epoch,
                        read + 1)

    def _samples(self, shards: list[str]) -> Iterator[dict]:
        expected = dict(zip(self.shards, self.counts))
        for shard in shards:
            try:
                n = 0
                for n, sample in enumerate(self.read(shard), 1):
                    yield sample
                if n < expected[shard]:  # cut at a member's end: a tar reader sees a shorter archive
                    raise ShardError(f"data.path: shard {shard} is corrupt at byte {os.path.getsize(shard)}: it ends "
                                     f"there, after {n} of its {expected[shard]} samples; pack it again, or set "
                                     "data.bad_shards=skip to read on without it")
            except ShardError as err:
                if self.bad_shards == "stop":
                    raise
                log.warning("%s; skipped (data.bad_shards=skip)", str(err).split("; pack it again")[0])

    def _cut(self, raw: list[dict], first: int) -> Batch:
        """A batch of views from ``raw`` samples, the ``first``-th of the process's epoch on: a bad
        sample's place goes to another of the batch."""
        views: list[torch.Tensor | None] = []
        labels: list[int] = []
        for i, sample in enumerate(raw):
            image, label = self.parse(sample)
            view = None
            if image is not None and label is not None:
                try:
                    g = sample_generator(self.seed, self.epoch, (first + i) * self.world + self.rank)
                    view = target_view(decode(image, self.size), self.size, self.scale, self.hflip, g)
                except Exception as err:  # noqa: BLE001 - an undecodable image is skipped, not fatal
                    log.warning("skipping sample %s of %s: %s: %s", sample.get("__key__"), sample.get("__url__"),
                                type(err).__name__, err)
            else:
                log.warning("skipping sample %s of %s: %s", sample.get("__key__"), sample.get("__url__"),
                            "no image" if image is None else "its label is not a whole number")
            views.append(view)
            labels.append(label if label is not None else -1)
        good = [i for i, v in enumerate(views) if v is not None]
        if not good:
            raise ShardError(f"data.path: none of {len(raw)} samples in a row could be read "
                             f"(the first {raw[0].get('__key__')} of {raw[0].get('__url__')})")
        bad = len(raw) - len(good)
        for n, i in enumerate(i for i, v in enumerate(views) if v is None):
            views[i], labels[i] = views[good[n % len(good)]], labels[good[n % len(good)]]
        return torch.stack(views), torch.tensor(labels, dtype=torch.int64), bad  # type: ignore[arg-type]
