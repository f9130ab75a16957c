"""Images kept in tar shards, the WebDataset layout: the files of one sample side by side under one
key (``000123.jpg``, ``000123.cls``), thousands of samples a shard. Which shards a config names,
how many samples each holds, reading one in order, and random access for the held-out split.

``data.path`` is a shard list in brace form (``shards/train-{000000..000127}.tar``), a glob, one
``.tar`` file, or a folder of them. In a folder, shards whose names begin with ``val``,
``validation`` or ``test`` are the held-out split (the first of these found) and the others the
train split, which is what ``iwm data pack`` writes; ``data.eval_path`` names the held-out shards
explicitly and wins. The index ``index.json`` that ``iwm data pack`` writes beside the shards
gives each shard's count; shards without one are counted once, from their tar headers.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import ConfigError, DataConfig
from .datasets import ViewDataset
from .folders import HELD_OUT_SPLITS, read_rgb
from .formats import require

log = logging.getLogger(__name__)

INDEX = "index.json"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff", "gif")
LABEL_KEY = "cls"


class ShardError(ConfigError):
    """A shard that cannot be read on: one line naming it and where it broke."""

    def __init__(self, message: str):
        # raised in a loader worker, it reaches the main process inside PyTorch's traceback text:
        # keep only this error's own line
        line = message.strip().splitlines()[-1]
        super().__init__(line.split(f"{type(self).__name__}: ", 1)[-1])


# ----------------------------------------------------------------------------------------------
# which shards


def expand(spec: str, key: str = "data.path") -> list[str]:
    """The shard files ``spec`` names (brace form, glob, one file or a folder), sorted as given;
    refused in one line where it names none."""
    if not spec:
        raise ConfigError(f"{key}: empty; set it to the shards (shards/train-{{000000..000127}}.tar, or their folder)")
    path = Path(spec)
    if path.is_dir():
        found = sorted(str(p) for p in path.glob("*.tar"))
    elif "{" in spec:
        braceexpand = require("braceexpand", "scale", "data.dataset=webdataset")
        found = list(braceexpand.braceexpand(spec))
    elif any(c in spec for c in "*?["):
        found = sorted(glob.glob(spec))
    else:
        found = [spec]
    missing = [f for f in found if not Path(f).is_file()]
    if not found or missing:
        what = f"{len(missing)} of its {len(found)} shards do not exist, the first {missing[0]}" if missing else \
            "no .tar file"
        raise ConfigError(f"{key}: {spec!r} names {what}; point it at the shards (iwm data pack writes them)")
    return found


def held_out_name(name: str) -> str | None:
    """The held-out split a shard's file name puts it in (``val-000000.tar`` -> val), or None."""
    for split in HELD_OUT_SPLITS:
        if name.startswith(split) and not name[len(split):len(split) + 1].isalpha():
            return split
    return None


def split_shards(cfg: DataConfig, train: bool) -> list[str]:
    """The shards of the train or held-out split (see the module's text for the rule)."""
    path = Path(cfg.path)
    if not train and cfg.eval_path:
        return expand(cfg.eval_path, "data.eval_path")
    if not path.is_dir():
        if train:
            return expand(cfg.path)
        raise ConfigError("data.eval_path: set it to the held-out shards (the probes and health checks read them), "
                          "or keep train and val shards in one folder and point data.path at it")
    shards = expand(cfg.path)
    if train:
        mine = [s for s in shards if held_out_name(Path(s).name) is None]
        if not mine:
            raise ConfigError(f"data.path: every shard in {path} is named as held out (val*, validation*, test*); "
                              "the train split needs shards of other names")
        return mine
    for split in HELD_OUT_SPLITS:
        mine = [s for s in shards if held_out_name(Path(s).name) == split]
        if mine:
            return mine
    raise ConfigError(f"data.eval_path: {path} has no held-out shards (named val-*.tar, validation-*.tar or "
                      "test-*.tar); set data.eval_path to them, since evaluating on training images would be "
                      "meaningless")


def read_index(folder: Path) -> dict | None:
    f = folder / INDEX
    return json.loads(f.read_text()) if f.is_file() else None


def sample_counts(shards: list[str], bad_shards: str = "stop") -> list[int]:
    """Samples (keys) in each shard: from the index beside it, else from its headers."""
    counts, scanned = [], 0
    indexes: dict[Path, dict | None] = {}
    for s in shards:
        folder = Path(s).parent
        if folder not in indexes:
            indexes[folder] = read_index(folder)
        known = (indexes[folder] or {}).get("shards", {}).get(Path(s).name)
        if known is None:
            known, scanned = len(members(s, bad_shards)), scanned + 1
        counts.append(int(known))
    if scanned:
        log.info("counted the samples of %d shards from their headers (no %s beside them; iwm data pack writes one)",
                 scanned, INDEX)
    return counts


# ----------------------------------------------------------------------------------------------
# reading


@dataclass
class Member:
    """Where one sample's image (and label) sit in its shard."""
    key: str
    offset: int  # of the image's bytes
    size: int
    label: int


def members(shard: str, bad_shards: str = "stop") -> list[Member]:
    """Every sample of a shard, by seeking from header to header (the image bytes are not read;
    a label is). A sample without an image has offset -1. A shard that breaks raises
    :class:`ShardError`, or (``bad_shards="skip"``) gives what it held before the break."""
    found: dict[str, Member] = {}
    offset = 0
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for info in tar:
                offset = info.offset
                if not info.isreg():
                    continue
                if info.offset_data + info.size > os.path.getsize(shard):
                    raise tarfile.ReadError(f"{info.name} is cut short")
                key, _, ext = info.name.partition(".")
                m = found.setdefault(key, Member(key, -1, 0, -1))
                ext = ext.lower()
                if ext in IMAGE_KEYS and m.offset < 0:
                    m.offset, m.size = info.offset_data, info.size
                elif ext == LABEL_KEY:
                    m.label = parse_label(tar.extractfile(info).read())
    except (tarfile.TarError, EOFError, OSError) as err:
        error = corrupt(shard, offset, err)
        if bad_shards == "stop":
            raise error from None
        log.warning("%s; read up to there (data.bad_shards=skip)", str(error).split("; pack it again")[0])
    return list(found.values())


def corrupt(shard: str, offset: int, err: Exception) -> ShardError:
    return ShardError(f"data.path: shard {shard} is corrupt at byte {offset} ({type(err).__name__}: {err}); pack it "
                      "again, or set data.bad_shards=skip to read on without it")


def parse_label(raw: bytes) -> int:
    """A ``cls`` member -> its class, or -1 where it is not a whole number (counted as a bad sample
    where it matters)."""
    try:
        return int(raw.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return -1


def samples(shard: str) -> Iterator[dict]:
    """A shard's samples in order, each a dict of its files' bytes by extension (``__key__``
    beside them), grouped by webdataset. A shard that breaks raises :class:`ShardError` naming
    the byte where its last readable member began."""
    wds = require("webdataset", "scale", "data.dataset=webdataset")
    offset = 0

    def files() -> Iterator[dict]:
        nonlocal offset
        with open(shard, "rb") as f:
            tar = tarfile.open(fileobj=f, mode="r|*")
            for info in tar:
                offset = info.offset
                if info.isreg():
                    data = tar.extractfile(info).read()
                    if len(data) != info.size:  # tarfile reads a cut member short, and says nothing
                        raise tarfile.ReadError(f"{info.name} is cut short: {len(data)} of its {info.size} bytes")
                    yield {"fname": info.name, "data": data, "__url__": shard}
                tar.members = []  # stream mode: keep no history

    try:
        yield from wds.tariterators.group_by_keys(files())
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise corrupt(shard, offset, err) from None


def image_and_label(sample: dict) -> tuple[bytes | None, int | None]:
    """The image bytes and class of a streamed sample; None for what is missing or malformed."""
    image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if LABEL_KEY not in sample:
        return image, -1
    label = parse_label(sample[LABEL_KEY])
    return image, None if label < 0 else label


def decode(image: bytes, size: int) -> torch.Tensor:
    return read_rgb(io.BytesIO(image), size)


class TarDataset(ViewDataset):
    """Random access to the samples of some shards (the held-out split; the probes' train split),
    by seeking to each image's bytes. An image that does not decode hands over to the next one
    (:meth:`ViewDataset.first_readable`)."""

    def __init__(self, shards: list[str], size: int, bad_shards: str = "stop", **kw):
        super().__init__(size, **kw)
        self.shards = shards
        every = [(i, m) for i, s in enumerate(shards) for m in members(s, bad_shards)]
        index = [(i, m) for i, m in every if m.offset >= 0]
        if not index:
            raise ConfigError(f"data.path: the shards {shards[0]}... hold no sample with an image")
        if len(index) < len(every):
            log.warning("skipping %d samples without an image in %d shards", len(every) - len(index), len(shards))
        self.where = [(i, m.offset, m.size) for i, m in index]
        self.labels = np.asarray([m.label for _, m in index], dtype=np.int64)

    def load(self, i: int) -> torch.Tensor:
        return self.first_readable(i, self._read, self._where)

    def _read(self, j: int) -> torch.Tensor:
        shard, offset, size = self.where[j]
        with open(self.shards[shard], "rb") as f:
            f.seek(offset)
            return decode(f.read(size), self.size)

    def _where(self, j: int) -> str:
        return f"in {self.shards[self.where[j][0]]} at byte {self.where[j][1]}"
