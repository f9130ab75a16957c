"""``data.dataset: hf``: a Hugging Face ``datasets`` dataset: a ``save_to_disk`` folder, parquet files
(one file, a glob, or a folder of them, split by file name as ``datasets`` does), or a Hub name
read from the local cache (the machine may be offline).

Its split ``data.split`` is pretrained on, ``data.eval_split`` held out ("" = validation, else
test). The image column (``data.image_column``) holds encoded images (or their paths), decoded
here with the draft mode of :func:`iwm.data.folders.read_rgb`; the label column
(``data.label_column``) whole numbers, or is absent (labels -1). Pretraining streams contiguous
row ranges of the memory-mapped Arrow table as shards (:mod:`.stream`), so it splits and resumes
exactly as tar shards do; evaluation reads rows by index.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..config import ConfigError, DataConfig
from .datasets import ViewDataset
from .folders import read_rgb
from .formats import DataFormat, register_format, require
from .stream import ShardStream


SHARD_ROWS = 1000  # rows a streamed shard holds, fewer where the streams would go short of shards
HELD_OUT = ("validation", "test")


def open_split(cfg: DataConfig, train: bool) -> Any:
    """The ``datasets.Dataset`` of the train or held-out split, its image column not decoded."""
    datasets = require("datasets", "scale", "data.dataset=hf")
    path = Path(cfg.path)
    try:
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            splits = datasets.load_from_disk(str(path))
        elif path.suffix == ".parquet" or any(c in cfg.path for c in "*?"):
            splits = datasets.load_dataset("parquet", data_files={"train": cfg.path})
        else:  # a folder of data files, or a Hub name (from the local cache when offline)
            splits = datasets.load_dataset(cfg.path)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        raise ConfigError(f"data.path: cannot open {cfg.path!r} as a Hugging Face dataset "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if isinstance(splits, datasets.Dataset):  # one split saved alone
        splits = datasets.DatasetDict({"train": splits})
    names = list(splits)
    if train:
        name, key = cfg.split, "data.split"
    else:
        name, key = cfg.eval_split or next((n for n in HELD_OUT if n in splits), ""), "data.eval_split"
        if not name:
            raise ConfigError(f"data.eval_split: {cfg.path} has no validation or test split (it has "
                              f"{', '.join(names)}); name the held-out one, since evaluating on training images "
                              "would be meaningless")
    if name not in splits:
        raise ConfigError(f"{key}: {cfg.path} has no split {name!r}; it has {', '.join(names)}")
    ds = splits[name]
    if cfg.image_column not in ds.column_names:
        raise ConfigError(f"data.image_column: {name} of {cfg.path} has no column {cfg.image_column!r}; its columns "
                          f"are {', '.join(ds.column_names)}")
    if isinstance(ds.features.get(cfg.image_column), datasets.Image):
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))  # decoded by us, in draft mode
    return ds


def image_bytes(value: Any) -> bytes | None:
    """An image cell (bytes, {"bytes", "path"}, or a path) -> its encoded bytes, or None."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and Path(value).is_file():
        return Path(value).read_bytes()
    return None


def as_label(value: Any) -> int | None:
    """A label cell -> a class (>= 0), -1 for no label, None where it is not a whole number."""
    if value is None:
        return -1
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value) if value >= 0 else -1


class RowReader:
    """Reads the rows of a shard named ``"first:stop"`` as samples (picklable: each loader worker
    opens the dataset again, memory-mapped)."""

    def __init__(self, cfg: DataConfig):
        self.cfg, self.ds = cfg, None

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "ds": None}

    def __call__(self, shard: str) -> Iterator[dict]:
        if self.ds is None:
            self.ds = open_split(self.cfg, True)
        first, stop = map(int, shard.split(":"))
        rows = self.ds[first:stop]
        labels = rows.get(self.cfg.label_column, [None] * (stop - first))
        for k, (image, label) in enumerate(zip(rows[self.cfg.image_column], labels)):
            yield {"__key__": first + k, "__url__": f"{self.cfg.path} rows {first}:{stop}", "image": image,
                   "label": label}


def parse_row(sample: dict) -> tuple[bytes | None, int | None]:
    return image_bytes(sample["image"]), as_label(sample["label"])


class HFViews(ViewDataset):
    """Rows of a split read by index (evaluation, probes). An image that does not decode hands
    over to the next row (:meth:`ViewDataset.first_readable`)."""

    def __init__(self, ds: Any, cfg: DataConfig, **kw):
        super().__init__(cfg.image_size, **kw)
        self.ds, self.column = ds, cfg.image_column
        raw = ds[cfg.label_column] if cfg.label_column in ds.column_names else [None] * len(ds)
        labels = [as_label(v) for v in raw]
        self.labels = np.asarray([-1 if v is None else v for v in labels], dtype=np.int64)
        if hasattr(ds.features.get(cfg.label_column), "names"):
            self.classes = list(ds.features[cfg.label_column].names)

    def load(self, i: int) -> torch.Tensor:
        return self.first_readable(i, self._read, lambda j: f"row {j} of {self.ds.split}")

    def _read(self, j: int) -> torch.Tensor:
        raw = image_bytes(self.ds[j][self.column])
        if raw is None:
            raise ValueError("no image")
        return read_rgb(io.BytesIO(raw), self.size)


@register_format
class HuggingFace(DataFormat):
    name = "hf"

    def dataset(self, cfg: DataConfig, seed: int, train: bool, augment: bool) -> HFViews:
        return HFViews(open_split(cfg, train), cfg, scale=cfg.crop_scale, hflip=cfg.hflip, seed=seed, train=augment)

    def stream(self, cfg: DataConfig, seed: int, rank: int, world: int) -> ShardStream:
        n = len(open_split(cfg, True))
        streams = world * max(1, cfg.num_workers)
        rows = max(1, min(SHARD_ROWS, n // streams))
        shards = [f"{a}:{min(a + rows, n)}" for a in range(0, n, rows)]
        return ShardStream(shards, [min(a + rows, n) - a for a in range(0, n, rows)], cfg.image_size,
                           cfg.batch_size, seed, rank, world, cfg.num_workers, cfg.shuffle_buffer, cfg.bad_shards,
                           cfg.crop_scale, cfg.hflip, read=RowReader(cfg), parse=parse_row)
