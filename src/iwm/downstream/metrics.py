"""Segmentation metrics from a confusion matrix: mIoU and pixel accuracy.

Pixels whose truth is the ignore index are left out entirely (whatever was predicted there).
A class absent from both the truth and the predictions (its row and column are empty) has
no defined IoU and is left out of the mean, rather than counted as 0 or 1.
"""

from __future__ import annotations

import torch

from .segdata import IGNORE


def confusion(pred: torch.Tensor, truth: torch.Tensor, num_classes: int, ignore_index: int = IGNORE) -> torch.Tensor:
    """(C, C) int64 counts, rows = truth, columns = prediction, over pixels whose truth is not
    ``ignore_index``; ``pred`` and ``truth`` have the same shape."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and truth {tuple(truth.shape)} differ in shape")
    keep = truth != ignore_index
    t, p = truth[keep].long(), pred[keep].long()
    if len(t) and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"truth holds class ids outside [0, {num_classes}) other than the ignore index "
                         f"{ignore_index}: {sorted(set(t.unique().tolist()) - set(range(num_classes)))[:5]}")
    if len(p) and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predictions hold class ids outside [0, {num_classes})")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """(C,) float64 IoU = TP / (TP + FP + FN); NaN where the class is in neither truth nor prediction."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(cm: torch.Tensor) -> float:
    iou = iou_per_class(cm)
    present = ~iou.isnan()
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = cm.sum()
    return float(cm.diagonal().sum().double() / total) if total > 0 else float("nan")


def summarize(cm: torch.Tensor) -> dict:
    """{"miou", "pixel_acc", "iou": per-class list (None where undefined)}."""
    return {"miou": mean_iou(cm), "pixel_acc": pixel_accuracy(cm),
            "iou": [None if v != v else float(v) for v in iou_per_class(cm).tolist()]}
