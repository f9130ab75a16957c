"""CIFAR-10 wherever a user keeps it: found (a path, $IWM_CIFAR10, the cache folder) or
downloaded with torchvision, read from any of its usual forms, decoded once and cached.

Forms read: the standard ``cifar-10-python.tar.gz`` (pickled batches) or its extracted
``cifar-10-batches-py/`` folder, a torchvision root holding either, our JPEG copy
(``cifar10-jpg.tar.gz``) and any ``train/`` + ``test/`` (or ``val/``) class-folder tree of 32x32
images, as a folder or a tarball.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import re
import shutil
import socket
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from ..config import ConfigError
from ..files import atomic_write, source_key
from .folders import HELD_OUT_SPLITS, IMAGE_EXTENSIONS

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ENV = "IWM_CIFAR10"
TARBALL = "cifar-10-python.tar.gz"  # the standard download ...
BATCHES = "cifar-10-batches-py"  # ... and the folder inside it
HOME_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
DOWNLOAD_SIZE = "about 170 MB"
FORMS = (f"{TARBALL}, its extracted {BATCHES}/ folder, a torchvision root, cifar10-jpg.tar.gz or a "
         "train/ test/ class-folder tree")

_BATCH = re.compile(r"data_batch_\d+|test_batch")


class CIFAR10NotFound(FileNotFoundError):
    """CIFAR-10 is nowhere we looked and could not be downloaded; the message says how to provide it."""


def cache_root(cache_dir: str | Path = "") -> Path:
    """Where CIFAR-10 is looked for, downloaded and its decoded arrays kept: ``cache_dir``, else
    $XDG_CACHE_HOME/iwm, else ~/.cache/iwm."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iwm"


# ----------------------------------------------------------------------------------------------
# finding it


def find_cifar10(path: str | Path = "", cache_dir: str | Path = "") -> Path:
    """The CIFAR-10 source: ``path`` when given; else $IWM_CIFAR10; else the standard tarball or
    its extracted folder in the cache folder; else the standard tarball downloaded there."""
    for given, key in ((path, "data.path"), (os.environ.get(ENV, ""), f"${ENV}")):
        if given:
            src = Path(given).expanduser()
            if not src.exists():
                raise FileNotFoundError(f"{key}: {str(given)!r} does not exist; point it at {FORMS} "
                                        "(or leave it empty to find or download CIFAR-10)")
            return src
    cache = cache_root(cache_dir)
    for name in (BATCHES, TARBALL):
        if (cache / name).exists():
            return cache / name
    return download_cifar10(cache, f"${ENV} is not set and {cache} holds no {TARBALL} or {BATCHES}/")


def _not_found(cache: Path, looked: str, why: str) -> CIFAR10NotFound:
    return CIFAR10NotFound(f"CIFAR-10 not found: {looked}, and {why}; put {TARBALL} (from {HOME_PAGE}) in "
                           f"{cache}, or point ${ENV} or data.path at it")


def download_cifar10(cache: Path, looked: str = "") -> Path:
    """Download the standard tarball into ``cache`` with torchvision (progress bar, md5 check)
    and return its path. Offline, or on any failure, raises one CIFAR10NotFound line."""
    from torchvision.datasets import CIFAR10

    looked = looked or f"nothing in {cache}"
    try:  # offline: say so at once, rather than after urllib's long connect timeout
        socket.create_connection((urlsplit(CIFAR10.url).hostname, 443), timeout=15).close()
    except OSError as err:
        raise _not_found(cache, looked, f"this machine is offline ({_first_line(err)})") from None
    print(f"iwm: CIFAR-10 not found ({looked}); downloading {TARBALL} ({DOWNLOAD_SIZE}) from {CIFAR10.url} "
          f"with torchvision into {cache}", file=sys.stderr, flush=True)
    tmp = cache / f".download-{os.getpid()}"  # an interrupted download never looks like the data
    try:
        CIFAR10(str(tmp), train=True, download=True)
        os.replace(tmp / TARBALL, cache / TARBALL)
    except Exception as err:  # noqa: BLE001 - HTTP, DNS, checksum, disk: each means "provide the file"
        raise _not_found(cache, looked, f"the download failed ({_first_line(err)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the extracted copy: the tarball is read directly
    return cache / TARBALL


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------
# reading it


def load_cifar10(path: str | Path = "", cache_dir: str | Path = "") -> dict[str, np.ndarray]:
    """{'train_x' (50000, 32, 32, 3) uint8, 'train_y', 'test_x', 'test_y'} from CIFAR-10 found
    as :func:`find_cifar10` says; decoded once, then read from the cache folder."""
    src = find_cifar10(path, cache_dir)
    cache = _cache_file(src, cache_dir)
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    arrays = read_cifar10(src)
    atomic_write(cache, lambda f: np.savez(f, **arrays))
    return arrays


def _cache_file(src: Path, cache_dir: str | Path) -> Path:
    return cache_root(cache_dir) / f"cifar10-{source_key(src, 16)}.npz"


def read_cifar10(src: Path) -> dict[str, np.ndarray]:
    """Decode CIFAR-10 from any of the forms in the module docstring: pickled batches where the
    source has them, else the images of a class-folder tree."""
    src = Path(src)
    if src.is_dir() and not (src / "data_batch_1").exists() and not (src / BATCHES).is_dir() \
            and (src / TARBALL).is_file():
        src = src / TARBALL  # a torchvision root holding only the download
    batches: dict[str, list[tuple[str, dict]]] = {"train": [], "test": []}
    images: dict[str, list[tuple[str, int, np.ndarray]]] = {s: [] for s in ("train", *HELD_OUT_SPLITS)}
    index = {c: k for k, c in enumerate(CIFAR10_CLASSES)}
    for rel, read in _members(src):
        parts = Path(rel).parts
        if _BATCH.fullmatch(parts[-1]):
            batches["test" if parts[-1] == "test_batch" else "train"].append((rel, _unpickle(read(), rel)))
            continue
        if Path(rel).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        for j, part in enumerate(parts[:-2]):  # .../<split>/<class>/<file>
            split, label = part.lower(), index.get(parts[j + 1].lower())
            if split in images and label is not None:
                images[split].append((rel, label, _decode(read(), rel)))
                break
    if batches["train"] or batches["test"]:
        return _from_batches(src, batches)
    held_out = next((s for s in HELD_OUT_SPLITS if images[s]), HELD_OUT_SPLITS[0])
    out = {}
    for split, name in (("train", "train"), ("test", held_out)):
        items = images[name]
        if not items:
            raise FileNotFoundError(f"data.path: {src} holds no CIFAR-10 (neither {BATCHES}/data_batch_N and "
                                    f"test_batch nor {_split_names(split)} class folders of images); "
                                    f"it should be one of {FORMS}")
        items.sort(key=lambda t: t[0])
        out[f"{split}_x"] = np.stack([t[2] for t in items])
        out[f"{split}_y"] = np.asarray([t[1] for t in items], dtype=np.int64)
    return out


def _split_names(split: str) -> str:
    return "train/" if split == "train" else " or ".join(f"{s}/" for s in HELD_OUT_SPLITS)


def _members(src: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(relative name, reader) of every file of a folder or tarball, in one pass."""
    if src.is_dir():
        for p in sorted(src.rglob("*")):
            if p.is_file():
                yield str(p.relative_to(src)), p.read_bytes
        return
    try:
        tar = tarfile.open(src)
    except tarfile.TarError as err:
        raise ConfigError(f"data.path: {src} is neither a folder nor a readable tarball ({err}); it should be "
                          f"one of {FORMS}") from None
    with tar:
        for m in tar:
            if m.isfile():
                yield m.name, tar.extractfile(m).read


def _from_batches(src: Path, batches: dict[str, list[tuple[str, dict]]]) -> dict[str, np.ndarray]:
    out = {}
    for split, found in batches.items():
        if not found:
            missing = "test_batch" if split == "test" else "data_batch_1..5"
            raise FileNotFoundError(f"data.path: {src} has CIFAR-10 batches but no {missing}")
        xs, ys = [], []
        for rel, batch in sorted(found, key=lambda t: t[0]):  # data_batch_1 .. 5: the standard order
            # bytes keys in the official (Python 2) files; str keys where a user re-pickled them in Python 3
            data, labels = batch.get(b"data", batch.get("data")), batch.get(b"labels", batch.get("labels"))
            if data is None or labels is None:
                raise ConfigError(f"data.path: {rel} in {src} is not a CIFAR-10 batch (no b'data' and b'labels'; "
                                  "CIFAR-100 is not supported)")
            data = np.asarray(data, dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
                raise ConfigError(f"data.path: {rel} in {src} holds data of shape {data.shape} for {len(labels)} "
                                  "labels; a CIFAR-10 batch holds (N, 3072) and N labels")
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are CHW planes
            ys.append(np.asarray(labels, dtype=np.int64))
        out[f"{split}_x"] = np.ascontiguousarray(np.concatenate(xs))
        out[f"{split}_y"] = np.concatenate(ys)
    return out


def _decode(data: bytes, rel: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"))
    if arr.shape != (32, 32, 3):
        raise ConfigError(f"data.path: {rel} is {arr.shape[1]}x{arr.shape[0]}, not a 32x32 CIFAR-10 image; "
                          "for other images use data.dataset=folder")
    return arr


# A pickle can name any importable function and have it called while loading, and these files
# may come from anywhere. A CIFAR-10 batch needs only numpy's array reconstruction (and
# _codecs.encode, which Python 3 writes for bytes at protocol 2), so nothing else may be loaded.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy.core.numeric", "_frombuffer"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
_NUMPY_CORE = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        canonical = module.replace("numpy._core", "numpy.core")  # numpy 2 writes _core, 1.x core
        if (canonical, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never does")
        return super().find_class(canonical.replace("numpy.core", _NUMPY_CORE), name)


def _unpickle(data: bytes, rel: str) -> dict:
    try:
        # 'bytes': the official batches were pickled by Python 2, their str keys load as bytes
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - a damaged or foreign pickle: say which file
        raise ConfigError(f"data.path: {rel} is not a readable CIFAR-10 batch ({_first_line(err)})") from None
    if not isinstance(batch, dict):
        raise ConfigError(f"data.path: {rel} is not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    return batch
