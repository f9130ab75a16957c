"""Lightweight protocols on a frozen encoder (the paper's Table 8): linear probe, attentive
probe, kNN. Each returns ``{"kind", "top1", "trainable_params", "seconds", "settings"}``;
``seconds`` is the time spent fitting the probe (feature extraction is in settings).

- linear: standardised mean-pooled features -> one linear layer, AdamW on the precomputed
  features (full batch when ``batch_size`` covers the set). Unless lr and weight decay are
  both given, they are picked from a small grid by accuracy on a held-out part of the train
  features, then the probe is refitted on all train features.
- attentive: a cross-attention pooling block with one learned query over the patch tokens,
  then LayerNorm + linear (V-JEPA). The tokens are computed once and cached (float16, on the
  CPU) when they fit in ``cache_gb``; otherwise the frozen encoder recomputes them per batch.
- knn: :func:`iwm.eval.knn.knn_accuracy` on the mean-pooled features.

Each can also run on the raw pixels (``pixels``), the reference a representation must beat.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..config import encoder_dims
from ..eval.features import extract
from ..eval.knn import knn_accuracy
from ..eval.pixels import RawPixels
from ..models import Encoder
from .data import labels_of
from .feeding import encoder_input, extract_tokens, pick_encoder, token_cache_bytes
from .heads import AttentiveClassifier
from .loop import check_choices, count_trainable, epoch_loader, fit, index_batches

if TYPE_CHECKING:
    from ..api import Run

KINDS = ("linear", "attentive", "knn")
PIXELS = "raw pixels"  # the features name of the raw-pixel reference rows
LINEAR_LRS = (1e-3, 1e-2, 1e-1)
LINEAR_WDS = (0.0, 1e-3, 1e-1)


# ----------------------------------------------------------------------------------------------
# linear


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Scale every feature to zero mean and unit variance with the train set's statistics."""
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)  # constant features stay finite
    return [(x - mean) / std for x in (train, *others)]


def _fit_linear(f: torch.Tensor, y: torch.Tensor, num_classes: int, lr: float, wd: float, epochs: int,
                batch_size: int, seed: int, progress: bool, desc: str) -> nn.Linear:
    torch.manual_seed(seed)  # same initial weights for every grid point
    head = nn.Linear(f.shape[1], num_classes).to(f.device)
    n = len(f)
    full = [torch.arange(n)]

    def batches(epoch: int) -> list[torch.Tensor]:
        if batch_size >= n:  # full batch: the order does not matter
            return full
        return index_batches(n, batch_size, seed, epoch)

    def loss(idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(f[idx]), y[idx])

    fit(head, loss, batches, epochs, len(batches(0)), lr, wd, warmup=0.0, progress=progress, desc=desc)
    return head


@torch.no_grad()
def _accuracy(head: nn.Module, f: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    correct = sum((head(c).argmax(1) == t).sum().item() for c, t in zip(f.split(chunk), y.split(chunk)))
    return correct / max(1, len(y))


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 epochs: int = 100, batch_size: int = 1024, lr: float | None = None,
                 weight_decay: float | None = None, lrs: Sequence[float] = LINEAR_LRS,
                 wds: Sequence[float] = LINEAR_WDS, val_fraction: float = 0.2, seed: int = 0,
                 device: torch.device | str = "cpu", progress: bool = False) -> dict:
    """Linear probe on precomputed features (N, D); see the module docstring."""
    device = torch.device(device)
    train_f, test_f = train_f.float().to(device), test_f.float().to(device)
    train_y, test_y = train_y.long().to(device), test_y.long().to(device)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    grid_lrs = [lr] if lr is not None else list(lrs)
    grid_wds = [weight_decay] if weight_decay is not None else list(wds)
    start = time.perf_counter()
    sweep = []
    if len(grid_lrs) * len(grid_wds) > 1:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1) for the sweep, got {val_fraction}")
        perm = torch.randperm(len(train_f), generator=torch.Generator().manual_seed(seed)).to(device)
        n_val = max(1, int(round(val_fraction * len(train_f))))
        val_idx, fit_idx = perm[:n_val], perm[n_val:]
        f_fit, f_val = standardize(train_f[fit_idx], train_f[val_idx])
        for a in grid_lrs:
            for w in grid_wds:
                head = _fit_linear(f_fit, train_y[fit_idx], num_classes, a, w, epochs, batch_size, seed,
                                   progress, f"linear lr={a:g} wd={w:g}")
                sweep.append({"lr": a, "weight_decay": w, "val_top1": _accuracy(head, f_val, train_y[val_idx])})
        best = max(sweep, key=lambda r: r["val_top1"])  # max keeps the first of equals: grid order
        chosen_lr, chosen_wd = best["lr"], best["weight_decay"]
    else:
        chosen_lr, chosen_wd = grid_lrs[0], grid_wds[0]
    f_train, f_test = standardize(train_f, test_f)
    head = _fit_linear(f_train, train_y, num_classes, chosen_lr, chosen_wd, epochs, batch_size, seed,
                       progress, "linear probe")
    top1 = _accuracy(head, f_test, test_y)
    return {"kind": "linear", "top1": top1, "trainable_params": count_trainable(head),
            "seconds": time.perf_counter() - start,
            "settings": {"lr": chosen_lr, "weight_decay": chosen_wd, "sweep": sweep, "epochs": epochs,
                         "batch_size": min(batch_size, len(train_f)), "val_fraction": val_fraction if sweep else 0.0,
                         "seed": seed, "train": len(train_f), "test": len(test_f), "num_classes": num_classes}}


# ----------------------------------------------------------------------------------------------
# attentive


class TokenSet:
    """The frozen encoder's tokens of a dataset: computed once and held (float16, CPU) when they
    take at most ``cache_bytes``, otherwise recomputed for every batch."""

    def __init__(self, encoder: Encoder, ds: Dataset, device: torch.device | str = "cpu",
                 cache_bytes: float = 2 * 2**30, batch_size: int = 256, num_workers: int = 0,
                 progress: bool = False, desc: str = "tokens"):
        self.encoder, self.ds, self.device = encoder, ds, torch.device(device)
        self.num_workers = num_workers
        self.labels = torch.as_tensor(labels_of(ds), dtype=torch.long)
        self.tokens: torch.Tensor | None = None
        self.cached = token_cache_bytes(len(ds), encoder) <= cache_bytes
        if self.cached:
            self.tokens, _ = extract_tokens(encoder, ds, self.device, batch_size, num_workers, progress=progress,
                                            desc=desc)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, seed: int = 0, epoch: int = 0,
                shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(float32 tokens, labels) on the device, in a seeded order when ``shuffle``."""
        if self.tokens is not None:
            order = (index_batches(len(self), batch_size, seed, epoch) if shuffle
                     else list(torch.arange(len(self)).split(batch_size)))
            for idx in order:
                yield self.tokens[idx].to(self.device).float(), self.labels[idx].to(self.device)
            return
        for views, y in epoch_loader(self.ds, batch_size, seed, epoch, self.num_workers, shuffle=shuffle):
            with torch.no_grad():
                t = self.encoder.tokens(encoder_input(views.to(self.device)))
            yield t.float(), y.to(self.device)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


def attentive_probe(train: TokenSet, test: TokenSet, num_heads: int, epochs: int = 20, batch_size: int = 256,
                    lr: float = 1e-3, weight_decay: float = 0.05, seed: int = 0, progress: bool = False) -> dict:
    """Attentive probe on frozen tokens; see the module docstring."""
    dim = (train.tokens.shape[-1] if train.tokens is not None else train.encoder.embed_dim)
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    torch.manual_seed(seed)
    model = AttentiveClassifier(dim, num_heads, num_classes).to(train.device)
    start = time.perf_counter()
    fit(model, lambda b: F.cross_entropy(model(b[0]), b[1]), lambda e: train.batches(batch_size, seed, e),
        epochs, train.num_batches(batch_size), lr, weight_decay, progress=progress, desc="attentive probe")
    seconds = time.perf_counter() - start
    correct = 0
    with torch.no_grad():
        for t, y in test.batches(batch_size, shuffle=False):
            correct += (model(t).argmax(1) == y).sum().item()
    return {"kind": "attentive", "top1": correct / max(1, len(test)), "trainable_params": count_trainable(model),
            "seconds": seconds,
            "settings": {"lr": lr, "weight_decay": weight_decay, "epochs": epochs, "batch_size": batch_size,
                         "num_heads": num_heads, "seed": seed, "train": len(train), "test": len(test),
                         "num_classes": num_classes, "cached_tokens": train.cached}}


# ----------------------------------------------------------------------------------------------
# kNN


def knn_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
              k: int = 20, temperature: float = 0.07) -> dict:
    """:func:`iwm.eval.knn.knn_accuracy` in the probes' result format (nothing is trained)."""
    start = time.perf_counter()
    top1 = knn_accuracy(train_f, train_y, test_f, test_y, k, temperature)
    return {"kind": "knn", "top1": top1, "trainable_params": 0, "seconds": time.perf_counter() - start,
            "settings": {"k": k, "temperature": temperature, "train": len(train_f), "test": len(test_f)}}


# ----------------------------------------------------------------------------------------------
# on a run


def run_probes(run: Run, kinds: Sequence[str], train_ds: Dataset, test_ds: Dataset, encoder: str = "target",
               epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
               weight_decay: float | None = None, seed: int = 0, device: torch.device | str = "cpu",
               num_workers: int = 0, cache_gb: float = 2.0, progress: bool = False, pixels: bool = False) -> list[dict]:
    """The probes ``kinds`` on the run's frozen encoder; train_ds/test_ds yield centred uint8
    views. Pooled features are extracted once for linear and kNN. ``None`` keeps each kind's
    default (linear: 100 epochs, batch 1024, lr/wd swept; attentive: 20 epochs, batch 256,
    lr 1e-3, wd 0.05). With ``pixels``, each kind also runs on the raw pixels
    (:class:`iwm.eval.pixels.RawPixels`: the flattened image for linear and kNN, its patches as
    tokens for the attentive probe), right after the encoder's row; ``encoder="pixels"`` runs on
    the pixels alone. Every row names its ``features``: ``"<encoder> encoder"`` or ``"raw pixels"``."""
    check_choices(kinds, KINDS, "probe kind")
    sources = []
    if encoder != "pixels":
        sources.append((f"{encoder} encoder", pick_encoder(run, encoder).to(device).eval()))
    if pixels or encoder == "pixels":
        sources.append((PIXELS, RawPixels.of(run.config).to(device)))
    common = {"encoder": encoder, "checkpoint": str(run.path), "step": run.step}
    heads = encoder_dims(run.config.model)[2]
    pooled: dict[str, tuple] = {}

    def pick(value, default):
        return default if value is None else value  # 0 is a value, not "unset"

    results = []
    for kind in kinds:
        for name, enc in sources:
            t0 = time.perf_counter()
            if kind in ("linear", "knn") and name not in pooled:
                kw = dict(num_workers=num_workers, progress=progress)
                pooled[name] = (*extract(enc, train_ds, device, desc=f"train features, {name}", **kw),
                                *extract(enc, test_ds, device, desc=f"test features, {name}", **kw))
            if kind == "linear":
                res = linear_probe(*pooled[name], epochs=pick(epochs, 100), batch_size=pick(batch_size, 1024), lr=lr,
                                   weight_decay=weight_decay, seed=seed, device=device, progress=progress)
            elif kind == "knn":
                res = knn_probe(*pooled[name], k=run.config.eval.knn_k, temperature=run.config.eval.knn_temperature)
            else:
                kw = dict(device=device, cache_bytes=cache_gb * 2**30, num_workers=num_workers, progress=progress)
                train = TokenSet(enc, train_ds, desc=f"train tokens, {name}", **kw)
                test = TokenSet(enc, test_ds, desc=f"test tokens, {name}", **kw)
                res = attentive_probe(train, test, _dividing(enc.embed_dim, heads), epochs=pick(epochs, 20),
                                      batch_size=pick(batch_size, 256), lr=pick(lr, 1e-3),
                                      weight_decay=pick(weight_decay, 0.05), seed=seed, progress=progress)
            res["features"] = name
            res["settings"].update(common, total_seconds=time.perf_counter() - t0)
            results.append(res)
    return results


def _dividing(dim: int, heads: int) -> int:
    """The most attention heads, up to ``heads``, that divide ``dim`` (pixel patches are 3 * p * p
    wide, which the encoder's head count need not divide)."""
    return max(h for h in range(1, heads + 1) if dim % h == 0)
