"""Labelled classification data for the downstream protocols, from the run's own data config.

Images come at the run's image size (the encoder's positional embedding is fixed to its grid).
Training views are lightly augmented (a random resized crop with scale in ``LIGHT_SCALE`` and a
horizontal flip, drawn by :func:`iwm.data.views.target_view`) or centred; evaluation views are
always centred.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Dataset

from ..config import DataConfig
from ..data import build_dataset
from ..eval.features import subset

if TYPE_CHECKING:
    from ..api import Run

LIGHT_SCALE = (0.5, 1.0)  # lighter than pretraining's crops: the head must still see the object


def data_config(run: Run, path: str | None = None) -> DataConfig:
    """The run's data config, with ``path`` replacing ``data.path`` when given."""
    cfg = run.config.data
    return cfg if not path else dataclasses.replace(cfg, path=str(path))


def train_set(run: Run, path: str | None = None, size: int = 0, seed: int = 0, augment: bool = True) -> Dataset:
    """The labelled train split (a seeded subset of ``size`` images when size > 0)."""
    cfg = dataclasses.replace(data_config(run, path), crop_scale=LIGHT_SCALE)
    # the run's seed picks the images (it also seeds the synthetic set), ours the augmentations
    ds = build_dataset(cfg, run.config.run.seed, "train", augment=augment)
    ds.seed = seed
    _require_labels(ds, "train")
    return subset(ds, size, seed=seed + 1)


def eval_set(run: Run, path: str | None = None, size: int = 0, seed: int = 0) -> Dataset:
    ds = build_dataset(data_config(run, path), run.config.run.seed, "test", augment=False)
    _require_labels(ds, "test")
    return subset(ds, size, seed=seed + 2)


def labels_of(ds: Dataset) -> np.ndarray:
    """The labels of a dataset or of a Subset of one, without loading images."""
    if hasattr(ds, "indices") and hasattr(ds, "dataset"):
        return np.asarray(ds.dataset.labels)[np.asarray(ds.indices)]
    return np.asarray(ds.labels)


def num_classes(*sets: Dataset) -> int:
    """The class count: the dataset's class list where it has one (a subset may miss a class),
    else 1 + the largest label."""
    counts = []
    for ds in sets:
        base = getattr(ds, "dataset", ds)
        classes = getattr(base, "classes", None)
        counts.append(len(classes) if classes else int(labels_of(ds).max()) + 1)
    return max(counts)


def _require_labels(ds: Dataset, split: str) -> None:
    if (np.asarray(ds.labels) < 0).any():
        raise ValueError(f"the {split} split has unlabelled images (a flat folder?): downstream tasks need "
                         "class sub-folders or CIFAR-10")
