"""Finetuning protocols of the paper's Table 4, side by side on one classification set.

- ``predictor``: the paper's predictor finetuning. Encoder frozen; the pretrained predictor is
  fed the encoder's tokens of the whole image as context and mask tokens at every position,
  with a = 0 (see :mod:`iwm.downstream.feeding`); an attentive head (one learned query
  cross-attending over the predictor's output tokens, :class:`.heads.AttentiveClassifier`)
  classifies. The head trains at the learning rate ``lr``, the pretrained predictor at
  ``predictor_lr_ratio * lr`` (the paper: one tenth of the lr a random predictor gets).
- ``random_predictor``: the control: a predictor of the same architecture at random
  initialisation, trained as in ``predictor`` but at the full ``lr``.
- ``encoder``: encoder + a linear head on its mean-pooled tokens (MAE's finetuning head).
- ``end2end``: encoder + pretrained predictor + the mean-pooled head, fed as in ``predictor``,
  all at ``lr``.

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

from ..config import encoder_dims
from ..models import Encoder, Predictor, build_predictor
from .data import num_classes as count_classes
from .feeding import encoder_input, pick_encoder, predict_all
from .heads import AttentiveClassifier, PooledHead
from .loop import LrScales, check_choices, count_trainable, epoch_loader, fit, steps_per_epoch

if TYPE_CHECKING:
    from ..api import Run

PROTOCOLS = ("predictor", "encoder", "end2end", "random_predictor")
HEADS = {"predictor": "attentive", "encoder": "pooled", "end2end": "pooled", "random_predictor": "attentive"}
# the pretrained predictor's lr over the lr of a randomly initialised one (the paper: one tenth)
PREDICTOR_LR_RATIO = 0.1


def set_trainable(encoder: Encoder, flag: bool) -> Encoder:
    """(Un)freeze an encoder; its sin-cos positional embedding stays fixed, as in pretraining."""
    for name, p in encoder.named_parameters():
        p.requires_grad_(flag and name != "pos_embed")
    return encoder


class TokenClassifier(nn.Module):
    """encoder -> [predictor at every position, a = 0] -> head (mean-pooled or attentive).

    A frozen encoder runs without autograd and stays in eval mode while the rest trains; the
    predictor trains at ``predictor_lr_scale`` times the scheduled learning rate."""

    def __init__(self, encoder: Encoder, predictor: Predictor | None, head: nn.Module, train_encoder: bool,
                 predictor_lr_scale: float = 1.0):
        super().__init__()
        self.encoder = set_trainable(encoder, train_encoder)
        self.predictor = predictor.requires_grad_(True) if predictor is not None else None
        self.train_encoder = train_encoder
        self.head = head
        self.predictor_lr_scale = predictor_lr_scale

    def lr_scales(self) -> LrScales:
        """The parameters that train at another multiple of the learning rate than 1."""
        if self.predictor is None or self.predictor_lr_scale == 1.0:
            return []
        return [(self.predictor.parameters(), self.predictor_lr_scale)]

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


def build_head(kind: str, dim: int, num_heads: int, num_classes: int) -> nn.Module:
    check_choices([kind], ("pooled", "attentive"), "head")
    return AttentiveClassifier(dim, num_heads, num_classes) if kind == "attentive" else PooledHead(dim, num_classes)


def build_protocol(run: Run, protocol: str, num_classes: int, encoder: str = "target", seed: int = 0,
                   predictor_lr_ratio: float = PREDICTOR_LR_RATIO) -> TokenClassifier:
    """The model of one protocol, on copies of the run's networks (on the run's device)."""
    check_choices([protocol], PROTOCOLS, "protocol")
    if not predictor_lr_ratio > 0:
        raise ValueError(f"predictor_lr_ratio must be > 0 (the paper's is {PREDICTOR_LR_RATIO:g}), "
                         f"got {predictor_lr_ratio:g}")
    enc = copy.deepcopy(pick_encoder(run, encoder))
    if protocol == "random_predictor":
        torch.manual_seed(seed + 1)  # the control's own stream, so that the head below is the same
        pred = build_predictor(run.config).to(run.device)
    elif protocol in ("predictor", "end2end"):
        pred = copy.deepcopy(run.predictor)
    else:
        pred = None
    torch.manual_seed(seed)  # the same initial head in the protocols that share its kind
    head = build_head(HEADS[protocol], enc.embed_dim, encoder_dims(run.config.model)[2], num_classes)
    model = TokenClassifier(enc, pred, head, train_encoder=protocol in ("encoder", "end2end"),
                            predictor_lr_scale=predictor_lr_ratio if protocol == "predictor" else 1.0)
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


def train_classifier(model: TokenClassifier, train_ds: Dataset, epochs: int, batch_size: int, lr: float,
                     weight_decay: float, seed: int, device: torch.device | str, num_workers: int = 0,
                     progress: bool = False, desc: str = "finetune"):
    """Cross-entropy training of ``model`` on (uint8 view, label) batches, each part at its
    multiple of the learning rate (:meth:`TokenClassifier.lr_scales`); returns the FitLog."""
    device = torch.device(device)

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        views, y = batch
        return F.cross_entropy(model(encoder_input(views.to(device, non_blocking=True))).float(), y.to(device))

    steps = steps_per_epoch(len(train_ds), batch_size, drop_last=True)
    return fit(model, loss, lambda e: epoch_loader(train_ds, batch_size, seed, e, num_workers, drop_last=True),
               epochs, steps, lr, weight_decay, clip_grad=1.0, progress=progress, desc=desc,
               lr_scales=model.lr_scales())


def run_protocols(run: Run, protocols: Sequence[str], train_ds: Dataset, test_ds: Dataset, epochs: int = 10,
                  batch_size: int = 128, lr: float = 5e-4, weight_decay: float = 0.05, encoder: str = "target",
                  seed: int = 0, device: torch.device | str | None = None, num_workers: int = 0,
                  progress: bool = False, predictor_lr_ratio: float = PREDICTOR_LR_RATIO) -> list[dict]:
    """Each protocol trained and scored in turn; one row per protocol:
    ``{"protocol", "top1", "trainable_params", "seconds_per_epoch", "final_loss", "settings"}``.
    ``lr`` is the peak learning rate of every part but the pretrained predictor of
    ``predictor``, which gets ``predictor_lr_ratio * lr``. The run's networks are moved to
    ``device`` (default: where they are)."""
    check_choices(protocols, PROTOCOLS, "protocol")
    if device is not None:
        run.to(device)
    device = run.device
    classes = count_classes(train_ds, test_ds)
    rows = []
    for p in protocols:
        model = build_protocol(run, p, classes, encoder, seed, predictor_lr_ratio)
        predictor_lr = None if model.predictor is None else lr * model.predictor_lr_scale  # peak
        t0 = time.perf_counter()
        log = train_classifier(model, train_ds, epochs, batch_size, lr, weight_decay, seed, device, num_workers,
                               progress, desc=p)
        rows.append({"protocol": p, "top1": top1(model, test_ds, device, num_workers=num_workers),
                     "trainable_params": count_trainable(model), "seconds_per_epoch": log.seconds_per_epoch,
                     "final_loss": log.final_loss,
                     "settings": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                                  "head": HEADS[p], "predictor_lr": predictor_lr, "encoder": encoder, "seed": seed,
                                  "train": len(train_ds), "test": len(test_ds),
                                  "num_classes": classes, "steps": log.steps, "checkpoint": str(run.path),
                                  "step": run.step, "total_seconds": time.perf_counter() - t0}})
        del model  # one protocol's copies at a time on the device
    return rows
