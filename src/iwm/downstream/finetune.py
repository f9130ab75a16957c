"""Finetuning protocols of the paper's Table 4, side by side on one classification set.

- ``predictor``: encoder frozen; the pretrained predictor is fed the encoder's tokens of the
  whole image as context and mask tokens at every position, with a = 0 (see
  :mod:`iwm.downstream.feeding`); its outputs are mean-pooled into a linear head. Predictor and
  head are trained.
- ``encoder``: encoder + a linear head on its mean-pooled tokens.
- ``end2end``: encoder + predictor + head, fed as in ``predictor``.
- ``random_predictor``: the control: a predictor of the same architecture at random
  initialisation, trained as in ``predictor``.

Every protocol works on copies of the run's networks (the run itself is never changed), uses
the same AdamW + warm-up/cosine schedule, data order and augmentations, and reports top-1 on
centred test views, its trainable parameter count and seconds per epoch.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models import Encoder, Predictor, build_predictor
from .data import num_classes as count_classes
from .feeding import encoder_input, pick_encoder, predict_all
from .heads import PooledHead
from .loop import check_choices, count_trainable, epoch_loader, fit, steps_per_epoch

if TYPE_CHECKING:
    from ..api import Run

PROTOCOLS = ("predictor", "encoder", "end2end", "random_predictor")


def set_trainable(encoder: Encoder, flag: bool) -> Encoder:
    """(Un)freeze an encoder; its sin-cos positional embedding stays fixed, as in pretraining."""
    for name, p in encoder.named_parameters():
        p.requires_grad_(flag and name != "pos_embed")
    return encoder


class TokenClassifier(nn.Module):
    """encoder -> [predictor at every position, a = 0] -> mean pool -> LayerNorm -> linear.

    A frozen encoder runs without autograd and stays in eval mode while the rest trains."""

    def __init__(self, encoder: Encoder, predictor: Predictor | None, num_classes: int, train_encoder: bool):
        super().__init__()
        self.encoder = set_trainable(encoder, train_encoder)
        self.predictor = predictor.requires_grad_(True) if predictor is not None else None
        self.train_encoder = train_encoder
        self.head = PooledHead(encoder.embed_dim, num_classes)

    def train(self, mode: bool = True) -> TokenClassifier:
        super().train(mode)
        if not self.train_encoder:
            self.encoder.eval()
        return self

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> the tokens the head pools."""
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            t = self.encoder.tokens(x)
        return predict_all(self.predictor, t) if self.predictor is not None else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x))


def build_protocol(run: Run, protocol: str, num_classes: int, encoder: str = "target",
                   seed: int = 0) -> TokenClassifier:
    """The model of one protocol, on copies of the run's networks (on the run's device)."""
    check_choices([protocol], PROTOCOLS, "protocol")
    enc = copy.deepcopy(pick_encoder(run, encoder))
    if protocol == "random_predictor":
        torch.manual_seed(seed + 1)  # the control's own stream, so that the head below is the same
        pred = build_predictor(run.config).to(run.device)
    elif protocol in ("predictor", "end2end"):
        pred = copy.deepcopy(run.predictor)
    else:
        pred = None
    torch.manual_seed(seed)  # the same initial head in every protocol
    model = TokenClassifier(enc, pred, num_classes, train_encoder=protocol in ("encoder", "end2end"))
    return model.to(run.device)


@torch.no_grad()
def top1(model: nn.Module, ds: Dataset, device: torch.device | str, batch_size: int = 256,
         num_workers: int = 0) -> float:
    """Accuracy of ``model`` (normalised images -> logits) on uint8 views of ``ds``."""
    model.eval()
    correct = total = 0
    for views, y in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        logits = model(encoder_input(views.to(device)))
        correct += (logits.argmax(1).cpu() == y).sum().item()
        total += len(y)
    return correct / max(1, total)


def train_classifier(model: nn.Module, train_ds: Dataset, epochs: int, batch_size: int, lr: float,
                     weight_decay: float, seed: int, device: torch.device | str, num_workers: int = 0,
                     progress: bool = False, desc: str = "finetune"):
    """Cross-entropy training of ``model`` on (uint8 view, label) batches; returns the FitLog."""
    device = torch.device(device)

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        views, y = batch
        return F.cross_entropy(model(encoder_input(views.to(device, non_blocking=True))).float(), y.to(device))

    steps = steps_per_epoch(len(train_ds), batch_size, drop_last=True)
    return fit(model, loss, lambda e: epoch_loader(train_ds, batch_size, seed, e, num_workers, drop_last=True),
               epochs, steps, lr, weight_decay, clip_grad=1.0, progress=progress, desc=desc)


def run_protocols(run: Run, protocols: Sequence[str], train_ds: Dataset, test_ds: Dataset, epochs: int = 10,
                  batch_size: int = 128, lr: float = 5e-4, weight_decay: float = 0.05, encoder: str = "target",
                  seed: int = 0, device: torch.device | str | None = None, num_workers: int = 0,
                  progress: bool = False) -> list[dict]:
    """Each protocol trained and scored in turn; one row per protocol:
    ``{"protocol", "top1", "trainable_params", "seconds_per_epoch", "final_loss", "settings"}``.
    The run's networks are moved to ``device`` (default: where they are)."""
    check_choices(protocols, PROTOCOLS, "protocol")
    if device is not None:
        run.to(device)
    device = run.device
    classes = count_classes(train_ds, test_ds)
    rows = []
    for p in protocols:
        model = build_protocol(run, p, classes, encoder, seed)
        t0 = time.perf_counter()
        log = train_classifier(model, train_ds, epochs, batch_size, lr, weight_decay, seed, device, num_workers,
                               progress, desc=p)
        rows.append({"protocol": p, "top1": top1(model, test_ds, device, num_workers=num_workers),
                     "trainable_params": count_trainable(model), "seconds_per_epoch": log.seconds_per_epoch,
                     "final_loss": log.final_loss,
                     "settings": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                                  "encoder": encoder, "seed": seed, "train": len(train_ds), "test": len(test_ds),
                                  "num_classes": classes, "steps": log.steps, "checkpoint": str(run.path),
                                  "step": run.step, "total_seconds": time.perf_counter() - t0}})
        del model  # one protocol's copies at a time on the device
    return rows
