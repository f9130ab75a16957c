"""Where images come from, by the name ``data.dataset`` gives: one class per format, registered
the way action families are (:func:`register_format`), so that a new format (TFRecord, a
database of images) is one new file and the training loop does not change.

A format gives random access to a split (:meth:`DataFormat.dataset`: probes, health checks,
kNN, and pretraining by default). A format whose images are read in order from large files
also gives :meth:`DataFormat.stream`: pretraining then reads it as a
:class:`iwm.data.stream.ShardStream`, split across processes and loader workers.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from torch.utils.data import Dataset, IterableDataset

from ..config import ConfigError, DataConfig


class DataFormat:
    """One way of keeping images. Subclasses set ``name`` and give :meth:`dataset`."""

    name: ClassVar[str] = ""

    def dataset(self, cfg: DataConfig, seed: int, train: bool, augment: bool) -> Dataset:
        """The train split (``train``) or the held-out one, as a map-style dataset of views
        (a :class:`iwm.data.datasets.ViewDataset`): random crops where ``augment``, centred
        images otherwise."""
        raise NotImplementedError

    def stream(self, cfg: DataConfig, seed: int, rank: int, world: int) -> IterableDataset | None:
        """Pretraining's reader of the train split (a :class:`iwm.data.stream.ShardStream`), or
        None to read :meth:`dataset` by index."""
        return None


_FORMATS: dict[str, type[DataFormat]] = {}


def register_format(cls: type[DataFormat]) -> type[DataFormat]:
    """Make ``cls`` the reader of ``data.dataset: <cls.name>`` (a class decorator). A name
    registered again is replaced, so that a notebook cell can be re-run."""
    if not (isinstance(cls, type) and issubclass(cls, DataFormat)) or not cls.name:
        raise TypeError(f"register_format takes a DataFormat subclass with a name, got {cls!r}")
    _FORMATS[cls.name] = cls
    return cls


def known_formats() -> tuple[str, ...]:
    return tuple(_FORMATS)


def get_format(name: str) -> DataFormat:
    if name not in _FORMATS:
        raise ConfigError(f"data.dataset: {name!r} is not a known format; choose from {', '.join(_FORMATS)}, or "
                          "register yours (iwm.data.register_format) before the run starts")
    return _FORMATS[name]()


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency, or refuse in one line that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the {module} package: pip install 'iwm[{extra}]' "
                          f"(or pip install {module})") from None
