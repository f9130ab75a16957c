"""Semantic segmentation with a light decoder on patch tokens (the paper's Table 6, small).

The decoder is a LayerNorm and one convolution over the token grid (kernel 1: a linear layer
per token; kernel 3: one 3x3 conv), giving class logits per patch, upsampled bilinearly to the
label resolution. Its input tokens come from one of these sources:

- ``encoder``: the frozen encoder's tokens;
- ``predictor``: the predictor fed as in :mod:`iwm.downstream.feeding` (whole image as
  context, every position queried, a = 0), finetuned with the decoder (encoder frozen);
- ``frozen_predictor``: the same, with the pretrained predictor frozen too.

Images are resized to the run's own image size (the encoder's positional embedding is fixed
to its grid); the loss is taken on labels at that size, the metrics (:mod:`.metrics`) on the
original labels.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..models import Encoder, Predictor
from .feeding import encoder_input, pick_encoder, predict_all
from .finetune import set_trainable
from .loop import check_choices, count_trainable, epoch_loader, fit, steps_per_epoch
from .metrics import confusion, summarize
from .segdata import IGNORE, SegFolder, collate_eval, seg_root

if TYPE_CHECKING:
    from ..api import Run

SOURCES = ("encoder", "predictor", "frozen_predictor")


class SegHead(nn.Module):
    """Tokens (B, g*g, D) -> logits (B, C, H, W) at any output size."""

    def __init__(self, dim: int, num_classes: int, grid: int, kernel_size: int = 1):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the grid keeps its size), got {kernel_size}")
        self.grid = grid
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, num_classes, kernel_size, padding=kernel_size // 2)

    def forward(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, d = tokens.shape
        x = self.norm(tokens).transpose(1, 2).reshape(b, d, self.grid, self.grid)
        return F.interpolate(self.conv(x), size=size, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Frozen encoder -> [predictor, trained or frozen] -> SegHead."""

    def __init__(self, encoder: Encoder, predictor: Predictor | None, num_classes: int, train_predictor: bool,
                 kernel_size: int = 1):
        super().__init__()
        self.encoder = set_trainable(encoder, False)
        self.predictor = predictor.requires_grad_(train_predictor) if predictor is not None else None
        self.train_predictor = train_predictor and predictor is not None
        self.head = SegHead(encoder.embed_dim, num_classes, encoder.grid, kernel_size)

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        self.encoder.eval()
        if self.predictor is not None and not self.train_predictor:
            self.predictor.eval()
        return self

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.encoder.tokens(x)
        if self.predictor is None:
            return t
        with torch.set_grad_enabled(self.train_predictor and torch.is_grad_enabled()):
            return predict_all(self.predictor, t)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.head(self.tokens(x), size or tuple(x.shape[-2:]))


def build_segmenter(run: Run, source: str, num_classes: int, encoder: str = "target", kernel_size: int = 1,
                    seed: int = 0) -> Segmenter:
    check_choices([source], SOURCES, "token source")
    torch.manual_seed(seed)  # the decoder's initial weights
    pred = copy.deepcopy(run.predictor) if source != "encoder" else None
    model = Segmenter(copy.deepcopy(pick_encoder(run, encoder)), pred, num_classes,
                      train_predictor=source == "predictor", kernel_size=kernel_size)
    return model.to(run.device)


def seg_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labelled pixels; 0 (not NaN) for a batch that is all ignore."""
    total = F.cross_entropy(logits.float(), mask, ignore_index=IGNORE, reduction="sum")
    return total / (mask != IGNORE).sum().clamp_min(1)


def segmentation_sets(run: Run, path: str | Path, train_split: str = "training", eval_split: str = "validation",
                      seed: int = 0, cache_dir: str | Path | None = None,
                      scale: tuple[float, float] = (0.5, 1.0)) -> tuple[SegFolder, SegFolder]:
    """Train (joint random crop/flip) and evaluation (resize) splits at the run's image size."""
    root = seg_root(path, cache_dir)
    size = run.config.data.image_size
    return (SegFolder(root, train_split, size, train=True, scale=scale, seed=seed),
            SegFolder(root, eval_split, size, train=False))


@torch.no_grad()
def evaluate_segmenter(model: Segmenter, ds: SegFolder, num_classes: int, batch_size: int = 32,
                       num_workers: int = 0) -> dict:
    """mIoU and pixel accuracy on the original-resolution labels of ``ds``."""
    model.eval()
    device = next(model.head.parameters()).device
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_eval)
    for images, masks in loader:
        tokens = model.tokens(encoder_input(images.to(device)))
        for t, mask in zip(tokens, masks):  # labels may differ in size: one upsampling each
            pred = model.head(t[None], tuple(mask.shape))[0].argmax(0).cpu()
            cm += confusion(pred, mask, num_classes)
    return {**summarize(cm), "confusion": cm.tolist()}


def run_segmentation(run: Run, sources: Sequence[str], train_ds: SegFolder, eval_ds: SegFolder, num_classes: int,
                     epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.05,
                     kernel_size: int = 1, encoder: str = "target", seed: int = 0,
                     device: torch.device | str | None = None, num_workers: int = 0,
                     progress: bool = False) -> list[dict]:
    """Decoder (and predictor, for ``predictor``) trained per token source; one row each:
    ``{"source", "miou", "pixel_acc", "trainable_params", "seconds_per_epoch", "settings", ...}``."""
    check_choices(sources, SOURCES, "token source")
    if device is not None:
        run.to(device)
    device = run.device
    rows = []
    for s in sources:
        model = build_segmenter(run, s, num_classes, encoder, kernel_size, seed)

        def loss(batch: tuple[torch.Tensor, torch.Tensor], model: Segmenter = model) -> torch.Tensor:
            images, masks = batch
            masks = masks.to(device)
            return seg_loss(model(encoder_input(images.to(device)), tuple(masks.shape[-2:])), masks)

        t0 = time.perf_counter()
        log = fit(model, loss, lambda e: epoch_loader(train_ds, batch_size, seed, e, num_workers, drop_last=True),
                  epochs, steps_per_epoch(len(train_ds), batch_size, drop_last=True), lr, weight_decay,
                  clip_grad=1.0, progress=progress, desc=f"segment {s}")
        scores = evaluate_segmenter(model, eval_ds, num_classes, batch_size, num_workers)
        rows.append({"source": s, "miou": scores["miou"], "pixel_acc": scores["pixel_acc"],
                     "trainable_params": count_trainable(model), "seconds_per_epoch": log.seconds_per_epoch,
                     "final_loss": log.final_loss, "iou": scores["iou"], "confusion": scores["confusion"],
                     "settings": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                                  "kernel_size": kernel_size, "encoder": encoder, "seed": seed,
                                  "num_classes": num_classes, "train": len(train_ds), "eval": len(eval_ds),
                                  "image_size": run.config.data.image_size, "checkpoint": str(run.path),
                                  "step": run.step, "total_seconds": time.perf_counter() - t0}})
        del model
    return rows
