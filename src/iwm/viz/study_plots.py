"""The studies' figures, drawn from the numbers a study measured (plain lists and dicts, so that
this module knows no study): MRR against predictor depth, top-1 along the protocols of growing
capacity, and the training-health curves of long runs."""

from __future__ import annotations

from pathlib import Path

from ..files import pyplot, save_figure


def mrr_by_depth(path: Path, depths: list[int], lines: dict[str, list[float]],
                 dotted: dict[str, tuple[str, list[float]]], chance: float, title: str) -> None:
    """One line per strength (``lines``), each again dotted where ranked on another bank
    (``dotted``: its label and values, keyed like ``lines``, same colour), chance dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for label, values in lines.items():
        line, = ax.plot(depths, values, marker="o", label=label)
        if label in dotted:
            ax.plot(depths, dotted[label][1], marker="o", ls=":", color=line.get_color(), label=dotted[label][0])
    ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
    ax.set_xticks(depths)
    ax.set_xlabel("predictor depth")
    ax.set_ylabel("MRR (clean source)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def protocol_spectrum(path: Path, protocols: list[str], top1: dict[str, list[float]], miou: dict[str, list[float]],
                      sources: list[str], reference: tuple[str, list[int], list[float]] | None = None) -> None:
    """Left: top-1 (%) along ``protocols``, one line per model; right: mIoU (%) per token source,
    bars. ``reference``: (label, protocol indices, top-1) drawn dashed (the raw pixels)."""
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(top1)
    for i, (label, values) in enumerate(top1.items()):
        ax.plot(range(len(protocols)), values, marker="o", label=label)
        bx.bar([j + (i - 1) * width for j in range(len(sources))], miou[label], width, label=label)
    if reference is not None:
        label, idx, values = reference
        ax.plot(idx, values, marker="x", ls="--", color="gray", label=label)
    ax.set_xticks(range(len(protocols)), protocols)
    ax.set_ylabel("CIFAR-10 top-1 (%)")
    ax.set_title("in domain: growing head capacity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bx.set_xticks(range(len(sources)), sources)
    bx.set_ylabel("CamVid mIoU (%)")
    bx.set_title("out of domain: segmentation")
    bx.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


HEALTH_PANELS = (("knn_top1", "health kNN top-1 (%)", 100), ("mrr", "health MRR", 1),
                 ("effective_rank", "effective rank (RankMe)", 1))
HEALTH_REFERENCES = {"knn_top1": ("knn_top1_pixels", "raw pixels"), "mrr": ("mrr_chance", "chance")}


def health_by_epoch(path: Path, curves: dict[str, list[dict]]) -> None:
    """kNN (raw pixels dashed), MRR (chance dashed) and effective rank against the epoch, one line
    per label; ``curves``: label -> health records with an ``epoch``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=120)
    every = [r for records in curves.values() for r in records]
    for ax, (key, title, scale) in zip(axes, HEALTH_PANELS):
        for label, records in curves.items():
            pts = [(r["epoch"], r[key] * scale) for r in records if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=label)
        ref = HEALTH_REFERENCES.get(key)
        value = None if ref is None else next((r[ref[0]] for r in every if r.get(ref[0]) is not None), None)
        if value is not None:
            ax.axhline(value * scale, color="gray", ls="--", label=ref[1])
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def knn_by_minutes(path: Path, curves: dict[str, list[tuple[float, float]]], pixels: float) -> None:
    """Validation kNN top-1 (%) against training minutes, one line per recipe, the raw pixels'
    score as a dashed line: where a line crosses it, that recipe has learned more than its input."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for label, points in curves.items():
        ax.plot([0.0, *(m for m, _ in points)], [None, *(100 * k for _, k in points)], marker="o", ms=3, label=label)
    ax.axhline(100 * pixels, color="gray", ls="--", lw=1, label="raw pixels")
    ax.set_xlabel("training minutes (CPU)")
    ax.set_ylabel("kNN top-1 on validation (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
