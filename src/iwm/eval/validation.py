"""A validation split carved from the train split, for choosing between models without reading
the test split: seeded held-out train images as kNN queries, scored against a bank of the others."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset, Subset

from .knn import knn_top1

if TYPE_CHECKING:
    from ..config import Config
    from ..models import Encoder

# the kNN protocol draws its bank with seed 1 and its test images with seed 2 (knn.knn_sets)
VALIDATION_SEED = 3


def validation_sets(cfg: "Config", num_queries: int, seed: int = VALIDATION_SEED) -> tuple[Dataset, Dataset]:
    """(bank, queries) from the train split, centred and unaugmented: ``num_queries`` images held
    out as validation queries and a bank of ``eval.knn_train`` of the others (0: all of them).
    Both come from one seeded permutation, so no image is in both."""
    from ..data import build_dataset

    train = build_dataset(cfg.data, cfg.run.seed, "train", augment=False)
    if not 0 < num_queries < len(train):
        raise ValueError(f"validation queries: need 1 to {len(train) - 1} of the {len(train)} train images "
                         f"(the rest make the kNN bank), got {num_queries}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    rest = order[num_queries:]
    bank = rest[:cfg.eval.knn_train] if cfg.eval.knn_train > 0 else rest
    return Subset(train, bank), Subset(train, order[:num_queries])


def knn_validation(encoder: "Encoder", bank: Dataset, queries: Dataset, cfg: "Config",
                   device: torch.device | str = "cpu", progress: bool = False) -> dict:
    """kNN top-1 of ``encoder`` on validation ``queries`` against ``bank`` (:func:`validation_sets`),
    with the config's k and temperature, as the test split is scored (:func:`.knn.knn_eval`)."""
    e = cfg.eval
    return {"top1": knn_top1(encoder, bank, queries, cfg, device, progress, "validation"),
            "k": e.knn_k, "temperature": e.knn_temperature, "bank": len(bank), "queries": len(queries)}
