"""Images in folders on disk: which files are images, where a dataset keeps its train and held-out
splits, and how one file is decoded to RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# where a folder dataset keeps its held-out split, beside train/, in the order looked for
# (ImageNet's labelled held-out split is val/; its test/ is unlabelled)
HELD_OUT_SPLITS = ("val", "validation", "test")


def read_rgb(path: Path, size: int = 0) -> torch.Tensor:
    """Any PIL-readable image -> uint8 RGB (3, H, W). 16-bit images are scaled to 8 bits (a
    plain RGB conversion would clip them white); palette, gray, RGBA and CMYK are converted."""
    with Image.open(path) as im:
        if size:
            im.draft("RGB", (size * 2, size * 2))  # JPEG: decode big images at a reduced scale
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            arr16 = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(arr16 / 257.0, 0, 255).astype(np.uint8), mode="L")
        arr = np.asarray(im.convert("RGB"))
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"unexpected decoded shape {arr.shape}")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def images_in(d: Path, recursive: bool = True) -> list[Path]:
    """The image files under ``d`` (by extension), sorted."""
    it = d.rglob("*") if recursive else d.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def folder_split(path: str | Path, train: bool = True) -> Path:
    """The folder of a folder dataset's train or held-out split. ``path`` is the dataset root
    (``train/`` beside ``val/``, ``validation/`` or ``test/``, looked for in that order), its
    ``train/`` folder itself (the held-out split is then a sibling), or a folder of classes
    with no split (training only: evaluation is refused, it would score training images)."""
    path = Path(path)
    if (path / "train").is_dir():
        root, train_dir = path, path / "train"
    elif path.name == "train":
        root, train_dir = path.parent, path
    else:
        root, train_dir = None, path
    if train:
        return train_dir
    for name in HELD_OUT_SPLITS if root is not None else ():
        if (root / name).is_dir():
            return root / name
    where = root if root is not None else path
    raise FileNotFoundError(
        f"data.path: {path} has no held-out split (looked for {', '.join(f'{n}/' for n in HELD_OUT_SPLITS)} "
        f"beside train/ in {where}); evaluating on training images would be meaningless: put held-out images "
        f"in {where / 'val'}/<class>/ beside {where / 'train'}/<class>/ and point data.path at {where}")
