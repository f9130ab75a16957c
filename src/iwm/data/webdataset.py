"""``data.dataset: webdataset``: tar shards in the WebDataset layout (:mod:`.shards`), streamed for
pretraining (:mod:`.stream`) and read by index for evaluation."""

from __future__ import annotations

from ..config import DataConfig
from .formats import DataFormat, register_format
from .shards import TarDataset, sample_counts, split_shards
from .stream import ShardStream


@register_format
class WebDataset(DataFormat):
    name = "webdataset"

    def dataset(self, cfg: DataConfig, seed: int, train: bool, augment: bool) -> TarDataset:
        return TarDataset(split_shards(cfg, train), cfg.image_size, cfg.bad_shards, scale=cfg.crop_scale,
                          hflip=cfg.hflip, seed=seed, train=augment)

    def stream(self, cfg: DataConfig, seed: int, rank: int, world: int) -> ShardStream:
        shards = split_shards(cfg, True)
        return ShardStream(shards, sample_counts(shards, cfg.bad_shards), cfg.image_size, cfg.batch_size, seed, rank, world,
                           cfg.num_workers, cfg.shuffle_buffer, cfg.bad_shards, cfg.crop_scale, cfg.hflip)
