"""Semantic segmentation data in the ADE20K layout:
``images/<split>/<stem>.jpg`` with ``annotations/<split>/<stem>.png`` (uint8 class ids,
255 = ignore), from a folder or a .tar/.tar.gz of one (extracted once into a cache folder).

Training samples are a joint random resized crop and flip of image and mask (bilinear for the
image, nearest for the mask), both resized to ``size`` x ``size``; evaluation samples are the
image resized to ``size`` x ``size`` and the mask at its original resolution, so metrics are
computed on the original labels.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from ..data.folders import read_rgb
from ..data.views import crop_box, sample_generator
from ..files import source_key

IGNORE = 255
DEFAULT_SEG_DATA = os.environ.get("IWM_CAMVID", "")  # an ADE20K-layout folder or tarball; none is shipped
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ----------------------------------------------------------------------------------------------
# finding the data


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "iwm"


def _layout_root(d: Path) -> Path | None:
    """``d`` or its only sub-folder, whichever holds images/ and annotations/."""
    if (d / "images").is_dir() and (d / "annotations").is_dir():
        return d
    subs = [s for s in d.iterdir() if s.is_dir()] if d.is_dir() else []
    if len(subs) == 1 and (subs[0] / "images").is_dir() and (subs[0] / "annotations").is_dir():
        return subs[0]
    return None


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Regular files and folders only, each inside ``dest`` (no links, devices or '..')."""
    root = dest.resolve()
    for m in tar:
        target = (dest / m.name).resolve()
        if root != target and root not in target.parents:
            raise ValueError(f"archive member {m.name!r} would land outside {dest}")
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif m.isfile():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def seg_root(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The folder holding images/ and annotations/: ``path`` itself (or its only sub-folder), or
    the extraction of the tarball ``path`` in ``cache_dir`` (default ~/.cache/iwm), made once."""
    if not path:
        raise FileNotFoundError("segmentation data: none given; pass --seg-data or set $IWM_CAMVID to an ADE20K-layout "
                                "folder or tarball (images/<split>/*.jpg, annotations/<split>/*.png), such as "
                                "ADE20K's ADEChallengeData2016/ (docs/data.md, Segmentation data)")
    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"segmentation data: {str(src)!r} does not exist")
    if src.is_dir():
        root = _layout_root(src)
        if root is None:
            raise FileNotFoundError(f"segmentation data: {src} holds no images/ and annotations/ folders")
        return root
    name = src.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")
    dest = _cache_root(cache_dir) / f"{name}-{source_key(src, 12)}"
    if not dest.is_dir():
        tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with tarfile.open(src) as tar:
            _safe_extract(tar, tmp)
        try:
            os.replace(tmp, dest)  # atomic: a half-extracted folder is never taken for the data
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    root = _layout_root(dest)
    if root is None:
        raise FileNotFoundError(f"segmentation data: {src} holds no images/ and annotations/ folders")
    return root


def read_mask(path: Path) -> torch.Tensor:
    """A label PNG -> uint8 class ids (H, W). Palette PNGs keep their indices (the ids)."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{path}: label images must be 8-bit class ids (mode L or P), got mode {im.mode}")
        arr = np.asarray(im)
    return torch.from_numpy(arr.copy())


# ----------------------------------------------------------------------------------------------
# the dataset


class SegFolder(Dataset):
    """One split of an ADE20K-layout folder. Yields (uint8 image (3, S, S), int64 mask):
    the mask is (S, S) when ``train`` (joint random crop/flip) and original-size otherwise."""

    def __init__(self, root: str | Path, split: str, size: int, train: bool = True,
                 scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True, seed: int = 0):
        root = Path(root)
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        if not img_dir.is_dir() or not ann_dir.is_dir():
            raise FileNotFoundError(f"segmentation data: no images/{split} and annotations/{split} under {root}")
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        masks = {p.stem: p for p in ann_dir.iterdir() if p.suffix.lower() == ".png"}
        missing = [p.name for p in images if p.stem not in masks]
        if missing:
            raise FileNotFoundError(f"segmentation data: {len(missing)} image(s) of {img_dir} have no label PNG "
                                    f"in {ann_dir}, e.g. {missing[0]}")
        if not images:
            raise FileNotFoundError(f"segmentation data: no images in {img_dir}")
        self.pairs = [(p, masks[p.stem]) for p in images]
        self.size, self.train, self.scale, self.hflip, self.seed = size, train, scale, hflip, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def raw(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The i-th image (3, H, W) and mask (H, W), uint8, as stored."""
        img_path, mask_path = self.pairs[i]
        img, mask = read_rgb(img_path), read_mask(mask_path)
        if img.shape[-2:] != mask.shape:
            raise ValueError(f"{img_path.name}: image {tuple(img.shape[-2:])} and label {tuple(mask.shape)} "
                             "sizes differ")
        return img, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.raw(i)
        s = [self.size, self.size]
        if not self.train:
            return TF.resize(img, s, antialias=True), mask.long()
        g = sample_generator(self.seed, self.epoch, i)
        top, left, h, w = crop_box(img.shape[-2], img.shape[-1], self.scale, (3 / 4, 4 / 3), g)
        img = TF.resized_crop(img, top, left, h, w, s, antialias=True)
        mask = TF.resized_crop(mask[None], top, left, h, w, s, interpolation=InterpolationMode.NEAREST_EXACT)[0]
        if self.hflip and torch.rand(1, generator=g).item() < 0.5:
            img, mask = TF.horizontal_flip(img), TF.horizontal_flip(mask)
        return img, mask.long()

    def num_classes(self) -> int:
        """1 + the largest class id in the split's labels (reads every label once)."""
        top = -1
        for _, m in self.pairs:
            ids = read_mask(m).unique()
            ids = ids[ids != IGNORE]
            if len(ids):
                top = max(top, int(ids.max()))
        return top + 1


def collate_eval(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Evaluation batches: images stacked, masks kept as a list (their sizes may differ)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
