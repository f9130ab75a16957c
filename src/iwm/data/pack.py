"""``iwm data pack``: any data set ``iwm`` reads as files (a class folder, ImageNet's layout,
CIFAR-10) written as WebDataset shards that ``data.dataset=webdataset`` trains from.

Each split becomes its own shards, ``<split>-000000.tar`` on (a held-out split keeps its name:
val, validation or test, which is how :mod:`.shards` finds it again). Samples are written in a
seeded random order, so that each shard holds every class (a stream's shuffle buffer only mixes
what it has read); a file keeps its bytes and its extension, an image held in memory (CIFAR-10) is
written as PNG, losslessly. ``index.json`` beside the shards gives the count of each shard, of
each split, and the class names.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..config import ConfigError
from ..files import write_text
from .folders import HELD_OUT_SPLITS, folder_split
from .formats import require
from .shards import INDEX

Item = tuple[str, bytes, int]  # extension, encoded image, label (-1: none)
Split = tuple[int, Callable[[int], Item]]  # its size, and its i-th item


def folder_splits(root: Path) -> dict[str, tuple[list[Path], np.ndarray, list[str]]]:
    """A class folder's splits: train (and its held-out split, under its own name, where it has one)."""
    from .datasets import ImageFolder

    out = {}
    train = ImageFolder(folder_split(root, True), 1)
    out["train"] = (train.files, train.labels, train.classes)
    try:
        held = folder_split(root, False)
    except FileNotFoundError:
        return out
    ds = ImageFolder(held, 1)
    out[held.name if held.name in HELD_OUT_SPLITS else "val"] = (ds.files, ds.labels, ds.classes)
    return out


def _files(files: list[Path], labels: np.ndarray) -> Split:
    def item(i: int) -> Item:
        return files[i].suffix.lower().lstrip("."), files[i].read_bytes(), int(labels[i])
    return len(files), item


def _arrays(images: np.ndarray, labels: np.ndarray) -> Split:
    def item(i: int) -> Item:
        buf = io.BytesIO()
        Image.fromarray(images[i]).save(buf, format="PNG")
        return "png", buf.getvalue(), int(labels[i])
    return len(images), item


def pack(source: str, out: str | Path, shard_size: int = 1000, seed: int = 0, cache_dir: str = "",
         progress: bool = True) -> dict:
    """Write the shards of ``source`` (a class folder, or ``cifar10`` / ``cifar10=PATH``) into
    ``out``; returns the index it writes there."""
    wds = require("webdataset", "scale", "iwm data pack")
    if shard_size < 1:
        raise ConfigError(f"--shard-size: {shard_size}; a shard holds at least one sample")
    out = Path(out)
    if out.is_dir() and any(out.glob("*.tar")):
        raise ConfigError(f"--out: {out} already holds shards; write into an empty folder")
    splits: dict[str, Split] = {}
    if source == "cifar10" or source.startswith("cifar10="):
        from .cifar10 import CIFAR10_CLASSES, load_cifar10

        arrays = load_cifar10(source.partition("=")[2], cache_dir)
        classes = list(CIFAR10_CLASSES)
        splits = {"train": _arrays(arrays["train_x"], arrays["train_y"]),
                  "test": _arrays(arrays["test_x"], arrays["test_y"])}
    else:
        if not Path(source).is_dir():
            raise ConfigError(f"SOURCE: {source!r} is neither a folder of images nor cifar10[=PATH]")
        found = folder_splits(Path(source))
        classes = found["train"][2]
        splits = {name: _files(files, labels) for name, (files, labels, _) in found.items()}
    out.mkdir(parents=True, exist_ok=True)
    index = {"format": "webdataset", "classes": classes, "splits": {}, "shards": {}}
    for name, (n, item) in splits.items():
        order = list(range(n))
        random.Random(seed).shuffle(order)
        counts = index["shards"]
        with wds.ShardWriter(str(out / f"{name}-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
            for k, i in enumerate(tqdm(order, desc=f"packing {name}", unit="img", disable=not progress)):
                ext, data, label = item(i)
                sample = {"__key__": f"{k:08d}", ext: data}
                if label >= 0:
                    sample["cls"] = str(label).encode()
                sink.write(sample)
                shard = f"{name}-{k // shard_size:06d}.tar"
                counts[shard] = counts.get(shard, 0) + 1
        index["splits"][name] = n
    write_text(out / INDEX, json.dumps(index, indent=1) + "\n")
    return index


def describe(index: dict, out: Path) -> Iterator[str]:
    for name, n in index["splits"].items():
        shards = sum(1 for s in index["shards"] if s.startswith(f"{name}-"))
        yield f"{name}: {n} images in {shards} shards"
    yield f"train from them: iwm pretrain data.dataset=webdataset data.path={out}"
