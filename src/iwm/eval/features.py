"""Pooled features of a frozen encoder over a dataset (for kNN and linear probes)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.views import normalize
from ..models import Encoder


def subset(ds: Dataset, n: int, seed: int) -> Dataset:
    """A seeded random subset of n items (n = 0 or >= len: the whole set)."""
    if n <= 0 or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(ds, idx.tolist())


@torch.no_grad()
def extract(encoder: Encoder, ds: Dataset, device: torch.device | str = "cpu", batch_size: int = 256,
            num_workers: int = 0, progress: bool = False, desc: str = "features", pooled: bool = True,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels (N,)) of a frozen encoder over uint8 views from ``ds``, on the CPU:
    mean-pooled final tokens (N, D), or with ``pooled=False`` every token (N, T, D)."""
    encoder.eval()
    # a generator of its own: the loader would otherwise draw its worker seed from the global RNG,
    # and an evaluation during training must leave the training's random streams untouched
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator())
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    feats, labels = [], []
    for views, y in loader:
        x = normalize(views.to(device).float().div_(255.0))
        f = encoder.pooled(x) if pooled else encoder.tokens(x)
        feats.append(f.to("cpu", dtype))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)
