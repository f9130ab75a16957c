"""k-nearest-neighbour classification on frozen features (cosine similarity, votes weighted
by exp(similarity / T), as in DINO's evaluation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from ..config import Config
    from ..models import Encoder


@torch.no_grad()
def knn_predict(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels (M,) for test features (M, D) from a labelled bank (N, D), (N,)."""
    num_classes = num_classes or int(train_y.max()) + 1
    k = min(k, train_f.shape[0])
    bank = F.normalize(train_f.float(), dim=1)
    out = []
    for q in F.normalize(test_f.float(), dim=1).split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes)
        votes.scatter_add_(1, train_y[idx], (sim / temperature).exp())
        out.append(votes.argmax(dim=1))
    return torch.cat(out)


def knn_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy in [0, 1]."""
    pred = knn_predict(train_f, train_y, test_f, k, temperature, int(max(train_y.max(), test_y.max())) + 1)
    return (pred == test_y).float().mean().item()


def knn_top1(encoder: "Encoder", bank: Dataset, queries: Dataset, cfg: "Config", device: torch.device | str = "cpu",
             progress: bool = False, name: str = "encoder") -> float:
    """kNN top-1 of ``encoder``'s pooled features of ``queries`` against those of a labelled
    ``bank``, with the config's k and temperature."""
    from .features import extract

    e = cfg.eval
    bank_f, bank_y = extract(encoder, bank, device, progress=progress, desc=f"kNN bank, {name}")
    query_f, query_y = extract(encoder, queries, device, progress=progress, desc=f"kNN test, {name}")
    return knn_accuracy(bank_f, bank_y, query_f, query_y, e.knn_k, e.knn_temperature)


def knn_sets(cfg: "Config") -> tuple[Dataset, Dataset]:
    """The kNN protocol's images: a bank of ``eval.knn_train`` centred train images (seeded
    subset) and ``eval.knn_test`` test images (the whole test split by default)."""
    from ..data import build_dataset
    from .features import subset

    e = cfg.eval
    train = subset(build_dataset(cfg.data, cfg.run.seed, "train", augment=False), e.knn_train, seed=1)
    test = subset(build_dataset(cfg.data, cfg.run.seed, "test"), e.knn_test, seed=2)
    return train, test


def knn_eval(encoder: "Encoder", cfg: "Config", device: torch.device | str = "cpu", progress: bool = False,
             pixels: bool = False) -> dict:
    """kNN top-1 of ``encoder`` on the config's data (:func:`knn_sets`). With ``pixels``, also
    ``pixels_top1``: the same protocol (bank, test images, k, temperature) on the raw pixels,
    the score a representation has to beat to be worth more than its input."""
    from .pixels import RawPixels

    e = cfg.eval
    train, test = knn_sets(cfg)
    res = {"top1": knn_top1(encoder, train, test, cfg, device, progress)}
    if pixels:
        res["pixels_top1"] = knn_top1(RawPixels.of(cfg).to(device), train, test, cfg, device, progress, "raw pixels")
    return {**res, "k": e.knn_k, "temperature": e.knn_temperature, "bank": len(train), "test": len(test)}
