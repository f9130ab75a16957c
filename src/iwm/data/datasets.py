"""Image sources held as files or arrays: an ImageFolder (class sub-folders or a flat folder; its
train and held-out splits), CIFAR-10 (read by :mod:`.cifar10`), and a small synthetic set for
tests, each registered as a format (:mod:`.formats`).

Each dataset yields ``(view, label)``: the target view y as a uint8 (3, S, S) tensor and an
integer label (-1 where there is none). Photometric work happens later, batched, on the
device; data workers only decode and crop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Hashable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DataConfig
from .folders import IMAGE_EXTENSIONS, folder_split, images_in, read_rgb
from .formats import DataFormat, get_format, register_format
from .views import center_view, sample_generator, target_view

log = logging.getLogger(__name__)


class ViewDataset(Dataset):
    """Base: subclasses give ``load(i) -> uint8 (3, H, W)`` and ``labels``."""

    labels: np.ndarray

    def __init__(self, size: int, scale: tuple[float, float] = (0.3, 1.0), hflip: bool = True,
                 seed: int = 0, train: bool = True):
        self.size, self.scale, self.hflip, self.seed, self.train = size, scale, hflip, seed, train
        self.epoch = 0
        self.skipped: dict[Hashable, str] = {}  # images that did not decode here (first_readable)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def first_readable(self, i: int, read: Callable[[int], torch.Tensor], where: Callable[[int], Hashable]
                       ) -> torch.Tensor:
        """``read(i)``, or where image i does not decode, the next image that does: a broken file
        is skipped, not fatal. Each failure is logged once and remembered in ``skipped``
        (``where(j)``, the image's file or place -> why), per process: each loader worker keeps
        its own."""
        n = len(self)
        for k in range(n):
            j = (i + k) % n
            if where(j) in self.skipped:
                continue
            try:
                return read(j)
            except Exception as err:  # noqa: BLE001 - any undecodable image is skipped, not fatal
                self.skipped[where(j)] = f"{type(err).__name__}: {err}"
                log.warning("skipping unreadable image %s (%s); %d skipped so far in this process", where(j),
                            self.skipped[where(j)], len(self.skipped))
        raise RuntimeError(f"no readable image among the {n} of the data set")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.load(i)
        if self.train:
            view = target_view(img, self.size, self.scale, self.hflip, sample_generator(self.seed, self.epoch, i))
        else:
            view = center_view(img, self.size)
        return view, int(self.labels[i])


class ArrayDataset(ViewDataset):
    """Images held in memory as one uint8 array (N, H, W, 3)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int, **kw):
        super().__init__(size, **kw)
        self.images = images
        self.labels = labels

    def load(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i]).permute(2, 0, 1)


class ImageFolder(ViewDataset):
    """A folder of images, read lazily with PIL. Class sub-folders give labels; a flat folder
    gives label -1. Files that cannot be decoded are skipped (logged with their path)."""

    def __init__(self, root: str | Path, size: int, **kw):
        super().__init__(size, **kw)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data.path: {str(root)!r} is not a directory of images")
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
        files: list[Path] = []
        labels: list[int] = []
        self.classes = [d.name for d in subdirs]
        for label, d in enumerate(subdirs):
            found = images_in(d)
            files += found
            labels += [label] * len(found)
        flat = images_in(root, recursive=False)
        files += flat
        labels += [-1] * len(flat)
        if not files:
            raise FileNotFoundError(f"data.path: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, i: int) -> torch.Tensor:
        return self.first_readable(i, lambda j: read_rgb(self.files[j], self.size), self.files.__getitem__)


# ----------------------------------------------------------------------------------------------
# synthetic


def synthetic_images(n: int, size: int = 32, num_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Coloured oriented gratings, one orientation/frequency/colour family per class, with
    random phase and noise: structured enough that a few steps of training lower the loss."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base_colors = rng.uniform(0.2, 0.9, (num_classes, 3))
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        angle = np.pi * c / num_classes
        freq = 2 + 2 * c
        phase = rng.uniform(0, 2 * np.pi)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        color = np.clip(base_colors[c] + rng.normal(0, 0.1, 3), 0, 1)
        img = wave[..., None] * color + rng.normal(0, 0.03, (size, size, 3))
        images[i] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return images, labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------


def build_dataset(cfg: DataConfig, seed: int, split: str = "train", augment: bool | None = None) -> ViewDataset:
    """The dataset a config names: its ``train`` split, or (any other ``split``) its held-out
    split. Views are random crops for training (``augment``, the default on the train split)
    and centred, unaugmented images otherwise."""
    train = split == "train"
    return get_format(cfg.dataset).dataset(cfg, seed, train, train if augment is None else augment)


def view_options(cfg: DataConfig, seed: int, augment: bool) -> dict:
    """The keywords every :class:`ViewDataset` takes from the config."""
    return dict(scale=cfg.crop_scale, hflip=cfg.hflip, seed=seed, train=augment)


@register_format
class Synthetic(DataFormat):
    """Generated gratings, for tests and first tries: nothing to download."""
    name = "synthetic"

    def dataset(self, cfg: DataConfig, seed: int, train: bool, augment: bool) -> ViewDataset:
        images, labels = synthetic_images(cfg.synthetic_size, cfg.image_size, seed=seed + (0 if train else 1))
        return ArrayDataset(images, labels, cfg.image_size, **view_options(cfg, seed, augment))


@register_format
class Cifar10(DataFormat):
    """CIFAR-10 in any of its usual forms (:mod:`.cifar10`), held in memory."""
    name = "cifar10"

    def dataset(self, cfg: DataConfig, seed: int, train: bool, augment: bool) -> ViewDataset:
        from .cifar10 import CIFAR10_CLASSES, load_cifar10

        arrays = load_cifar10(cfg.path, cfg.cache_dir)
        part = "train" if train else "test"
        ds = ArrayDataset(arrays[f"{part}_x"], arrays[f"{part}_y"], cfg.image_size,
                          **view_options(cfg, seed, augment))
        ds.classes = list(CIFAR10_CLASSES)
        return ds


@register_format
class Folder(DataFormat):
    """A folder of images: class sub-folders (ImageNet's layout, train/ beside val/) or flat."""
    name = "folder"

    def dataset(self, cfg: DataConfig, seed: int, train: bool, augment: bool) -> ViewDataset:
        return ImageFolder(folder_split(cfg.path, train), cfg.image_size, **view_options(cfg, seed, augment))
