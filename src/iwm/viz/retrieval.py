"""The paper's Figure 1: what the world model predicts, shown through the bank of targets.

One row per (image, action family): the source view x, the transformation a_x->y in words, the
true target y, then the bank entries nearest to the prediction (nearest first; the true target
outlined). The bank, source transformation and mask are those of :mod:`iwm.eval.mrr` for the
same seed and bank size; bank entry 0 is the row's true target. A family that transforms the
source is shown as the augmented protocol scores it (x carries it, the bank is the run's
target transformations); one that transforms only the target (the geometric ones) as the
clean protocol scores it (x is the clean image, the bank is that family's transformations).
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..eval.mrr import Probe, eval_images, image_generator, source_families, target_families
from ..files import save_figure

if TYPE_CHECKING:
    from ..api import Run
    from ..config import AugConfig

log = logging.getLogger(__name__)

CELL = 1.25  # inches per image cell
HEADER = 0.3  # inches above the first row for column titles
DPI = 100
LEADING = 3  # columns before the neighbours: source, transformation, target


def _show(ax, img: torch.Tensor, outline: str | None = None) -> None:
    ax.imshow(img.clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(outline is not None)
        if outline:
            spine.set_edgecolor(outline)
            spine.set_linewidth(3)


def retrieval_figure(run: Run, out_path: str | Path, num_images: int = 4, num_neighbours: int = 4, bank_size: int = 64,
                     seed: int = 0, device: str | torch.device = "cpu", families: tuple[str, ...] | None = None,
                     aug: AugConfig | None = None) -> Path:
    """Write the figure as a PNG of (LEADING + num_neighbours) x CELL by
    (rows x CELL + HEADER) inches at DPI, rows = num_images x len(families) (default: ``all``
    and every family the run learns); returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_neighbours = min(num_neighbours, bank_size)
    probe = Probe(run, aug, device)
    moved = set(target_families(probe.actions)) - set(source_families(probe.actions))
    shown = (*source_families(probe.actions), *sorted(moved, key=probe.actions.names.index))
    families = shown if families is None else tuple(families)
    unknown = [f for f in families if f not in shown]
    if unknown:
        raise ValueError(f"the figure shows the families {', '.join(shown)} of this run, not {', '.join(unknown)}")
    if probe.bank_is_degenerate(bank_size, seed):
        log.warning("the bank transformations are all the identity: every neighbour is the same image")
    imgs = eval_images(run, num_images, seed)
    rows, cols = len(imgs) * len(families), LEADING + num_neighbours
    height = rows * CELL + HEADER
    fig = Figure(figsize=(cols * CELL, height), dpi=DPI)
    FigureCanvasAgg(fig)  # render with Agg whatever the session's backend
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - HEADER / height, wspace=0.08, hspace=0.08)
    axes = fig.subplots(rows, cols, squeeze=False)
    titles = ["source x", "a_x->y", "target y"] + [f"neighbour {j + 1}" for j in range(num_neighbours)]
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=8)
    row = 0
    for i in range(len(imgs)):
        shared = probe.trial(imgs[i], bank_size, image_generator(seed, i))
        for family in families:
            if family in moved:  # the clean image, and a bank of this family's transformations
                trial, s = probe.trial(imgs[i], bank_size, image_generator(seed, i, family), family=family), None
            else:
                trial, s = shared, probe.edit(shared.source, family)
            actions = probe.action(trial, s)
            pred = probe.predict(trial, s, actions)  # all K, so the rank is the MRR's rank
            rank = round(1.0 / trial.reciprocal_ranks(pred)[0].item())
            order = trial.distances(pred)[0][0].argsort(stable=True)
            ax = axes[row]
            _show(ax[0], probe.source_view(trial, s)[0])
            ax[1].axis("off")
            text = (f"[{family}]\n" + textwrap.fill(probe.actions.describe(actions[0]), 24)
                    + f"\ntrue rank {rank}/{len(order)}")
            ax[1].text(0.5, 0.5, text, ha="center", va="center", fontsize=7, transform=ax[1].transAxes)
            _show(ax[2], trial.bank_images[0])
            for j, k in enumerate(order[:num_neighbours].tolist()):
                _show(ax[LEADING + j], trial.bank_images[k], "lime" if k == 0 else None)
            for j in range(len(order), num_neighbours):  # a family with fewer transformations
                ax[LEADING + j].axis("off")
            row += 1
    return save_figure(fig, out_path, dpi=DPI)
