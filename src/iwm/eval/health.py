"""Training health, measured while a run trains: is the representation forming or collapsing?
kNN, MRR, feature statistics and the loss per transformation family, on held-out data fixed once.

Everything the monitor draws (which images, their transformations and masks, the MRR banks)
comes from generators seeded by the run's seed, never from the global RNG: training is bitwise
the same with the monitor on or off, and a resumed run measures exactly what an uninterrupted
one would.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from ..config import Config
from ..data import build_dataset, normalize
from ..masks import MultiBlockMasker
from ..actions import ActionSet, length, move
from .features import extract, subset
from .knn import knn_accuracy
from .mrr import compute_mrr
from .pixels import RawPixels
from ..files import pyplot, save_figure

if TYPE_CHECKING:
    from ..models import IWM

log = logging.getLogger(__name__)

SEED_OFFSET = 7_919  # the monitor's streams: apart from the run's other seeded draws


# ----------------------------------------------------------------------------------------------
# statistics of a feature matrix


def effective_rank(features: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the (N, D) matrix's singular values
    normalised to sum 1 (plus ``eps``). 1 when every row is the same, at most min(N, D); NaN
    for non-finite features (the SVD would fail on them)."""
    if not torch.isfinite(features).all():
        return math.nan
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum().clamp_min(1e-300) + eps
    return math.exp(-(p * p.log()).sum().item())


def feature_std(features: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalised (N, D) features, times sqrt(D): 0 when every
    image maps to the same direction, about 1 when the features spread evenly over all of them.
    Normalised so that one threshold fits encoders of any width and output scale."""
    f = F.normalize(features.double(), dim=1)
    return (f.std(0).mean() * math.sqrt(f.shape[1])).item()


def collapse_signs(std: float, rank: float, min_std: float, min_rank: float) -> list[str]:
    """Why the features look collapsed (empty when they do not), naming the config keys."""
    if not (math.isfinite(std) and math.isfinite(rank)):
        return ["the target encoder's features are not finite"]
    signs = []
    if std < min_std:
        signs.append(f"feature std {std:.4f} < eval.collapse_std {min_std:g}")
    if rank < min_rank:
        signs.append(f"effective rank {rank:.2f} < eval.collapse_rank {min_rank:g}")
    return signs


# ----------------------------------------------------------------------------------------------
# the monitor


def _stack(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 views (N, 3, S, S) and labels (N,) of a (small) dataset, held in memory."""
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([v for v, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)


class HealthMonitor:
    """Scores a model in training on held-out data drawn once, at construction, from ``cfg``.

    Held out: ``eval.health_test`` centred test images (kNN queries, feature statistics; the
    first ``eval.health_loss_batch`` of them for the per-family loss, the first
    ``eval.health_mrr_images`` for MRR) and, where the data has labels, a kNN bank of
    ``eval.health_bank`` centred train images. Calling it returns one record (a dict).
    ``verbose``: log what it holds and warn of collapse (one process of several stays quiet).
    """

    def __init__(self, cfg: Config, device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
                 verbose: bool = True):
        e, seed = cfg.eval, cfg.run.seed + SEED_OFFSET
        self.cfg, self.device, self.amp_dtype, self.verbose = cfg, torch.device(device), amp_dtype, verbose
        test = build_dataset(cfg.data, cfg.run.seed, "test", augment=False)
        self.test, self.test_labels = _stack(subset(test, e.health_test, seed))
        self.bank = self.bank_labels = None
        if e.health_bank > 0 and bool((self.test_labels >= 0).all()):
            train = build_dataset(cfg.data, cfg.run.seed, "train", augment=False)
            bank, labels = _stack(subset(train, e.health_bank, seed + 1))
            if bool((labels >= 0).all()):  # a flat folder has no labels: no kNN, the rest still runs
                self.bank, self.bank_labels = bank, labels
        # the raw-pixel reference, once: the same kNN on the same images
        pixels = RawPixels.of(cfg)
        self.pixels_top1 = (self._knn(self._features(pixels, self.bank), self._features(pixels, self.test))
                            if self.bank is not None else None)

        # the per-family loss: one fixed batch, transformations and masks
        n = min(e.health_loss_batch, len(self.test))
        g = torch.Generator().manual_seed(seed + 2)
        self.actions = ActionSet.from_config(cfg.aug, cfg.data.image_size)
        self.source, self.target = self.actions.sample_pair(n, g)
        # identity transformations (I-JEPA) have no families to tell apart
        self.families = ("all", *self.actions.names) if cfg.aug.strength > 0 else ("all",)
        # each family's masks, drawn once from the same state: one context for all, and a moved
        # view's targets where that family's move brings each block
        masker, state = MultiBlockMasker(cfg.mask, cfg.data.image_size // cfg.model.patch_size), g.get_state()
        self.masks = {}
        for f in self.families:
            draw = torch.Generator()
            draw.set_state(state)
            target = self.actions.for_family(self.source, self.target, f)[1]
            self.masks[f] = masker(n, draw, self.actions.support(target, masker.grid, cfg.data.image_size))
        self.mrr_seed = seed + 3
        if verbose:
            log.info("health checks every %d steps on %d held-out images%s; loss per family on %d, MRR on %d x %d",
                     e.every, len(self.test), "" if self.bank is None else
                     f", kNN bank of {len(self.bank)} (raw pixels score {100 * self.pixels_top1:.2f} %)",
                     n, min(e.health_mrr_images, len(self.test)), e.health_mrr_bank)

    def _knn(self, bank_f: torch.Tensor, test_f: torch.Tensor) -> float:
        e = self.cfg.eval
        return knn_accuracy(bank_f, self.bank_labels, test_f, self.test_labels, e.knn_k, e.knn_temperature)

    def _features(self, encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, D), fp32 on the CPU."""
        with self._autocast():  # the networks run as in training
            return extract(encoder, TensorDataset(images, torch.zeros(len(images))), self.device)[0]

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def __call__(self, model: IWM, step: int) -> dict:
        """One health record of ``model`` (an :class:`iwm.models.IWM`, unwrapped) at ``step``.
        The networks are left in the training mode they were in."""
        from ..api import Run

        e, t0 = self.cfg.eval, time.perf_counter()
        modes = [(m, m.training) for m in model.modules()]
        try:
            rec: dict = {"kind": "health", "step": step}
            # the whole model first: under FSDP the root module must run before any of its parts
            rec.update(self._family_losses(model))
            test_f = self._features(model.target_encoder, self.test)
            if self.bank is not None:
                bank_f = self._features(model.target_encoder, self.bank)
                rec["knn_top1"] = self._knn(bank_f, test_f)
                rec["knn_top1_pixels"] = self.pixels_top1
                test_f = torch.cat([bank_f, test_f])  # the statistics see every held-out image
            rec["feature_std"] = feature_std(test_f)
            rec["effective_rank"] = effective_rank(test_f)
            if e.health_mrr_images > 0:  # in fp32: ranks compare close distances
                run = Run(self.cfg, model.encoder, model.target_encoder, model.predictor, step,
                          Path(self.cfg.run.out_dir))
                # the paper's protocol: the clean image is the source
                res = compute_mrr(run, images=self.test[:e.health_mrr_images], bank_size=e.health_mrr_bank,
                                  seed=self.mrr_seed, device=self.device, source="clean")
                rec["mrr"] = res["mrr"]  # None where the bank is all identities
                if res["floor"] is not None:  # the bank moves pixels: what needs no learning, beside it
                    rec["mrr_floor"] = res["floor"]
                if len(res["families"]) > 1:  # each family the target's bank draws from, alone
                    rec.update({f"mrr_{f}": v["mrr"] for f, v in res["families"].items()})
                    rec.update({f"mrr_{f}_floor": v["floor"] for f, v in res["families"].items()
                                if v["floor"] is not None})
                rec["mrr_chance"] = res["chance"]
        finally:
            for m, training in modes:
                m.training = training
        signs = collapse_signs(rec["feature_std"], rec["effective_rank"], e.collapse_std, e.collapse_rank)
        rec["collapse"] = bool(signs)
        rec["seconds"] = time.perf_counter() - t0
        if signs and self.verbose:
            log.warning("step %d: signs of collapse in the target encoder's features: %s. The encoder maps "
                        "different images to nearly the same features; lower optim.lr, raise optim.ema, or check "
                        "the masks and data", step, "; ".join(signs))
        return rec

    def _family_losses(self, model: IWM) -> dict[str, float]:
        """The training loss on the fixed batch, with the transformation cut down to one family
        at a time (``all``: as sampled; :meth:`iwm.actions.ActionSet.for_family`); the context
        stays the same, and a moved view's targets are the patches each block moves to."""
        model.eval()
        n = length(self.source)
        c = self.test[:n].to(self.device).float().div_(255.0)
        losses = []
        for f in self.families:
            source, target = (move(t, self.device) for t in self.actions.for_family(self.source, self.target, f))
            masks = self.masks[f].to(self.device)
            x, y = normalize(self.actions.apply(c, source)), normalize(self.actions.apply(c, target))
            with self._autocast():
                losses.append(model(x, y, self.actions.encode(source, target), masks).float())
        # one device-to-host copy for all families, not a sync per family
        return {f"loss_{f}": v for f, v in zip(self.families, torch.stack(losses).tolist())}


# ----------------------------------------------------------------------------------------------
# reading and plotting the records


def read_health(metrics: str | Path) -> list[dict]:
    """The health records of a run's metrics.jsonl, in step order."""
    path = Path(metrics)
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "health"]


def plot_health(records: list[dict], path: str | Path, cfg: Config | None = None) -> None:
    """health.png: kNN top-1 (raw pixels dashed), MRR (chance dashed), feature std and effective
    rank (collapse thresholds dotted), and the loss per transformation family, against the step."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.2), dpi=110)
    steps = [r["step"] for r in records]

    def line(ax, key, label=None, scale=1.0, **kw):
        pts = [(s, scale * r[key]) for s, r in zip(steps, records) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, lw=1, label=label, **kw)

    ax = axes[0]
    line(ax, "knn_top1", "target encoder", 100)
    line(ax, "knn_top1_pixels", "raw pixels", 100, ls="--", color="gray")
    ax.set_title("kNN top-1 (%)")
    ax = axes[1]
    line(ax, "mrr", "world model")
    line(ax, "mrr_floor", "floor (no learning)", ls=":", color="black")
    line(ax, "mrr_chance", "chance", ls="--", color="gray")
    ax.set_title("MRR")
    for ax, key, title, limit in ((axes[2], "feature_std", "feature std", "collapse_std"),
                                  (axes[3], "effective_rank", "effective rank (RankMe)", "collapse_rank")):
        line(ax, key)
        if cfg is not None and getattr(cfg.eval, limit) > 0:
            ax.axhline(getattr(cfg.eval, limit), ls=":", color="red", lw=1, label="collapse threshold")
        ax.set_title(title)
    ax = axes[4]
    families = [k[len("loss_"):] for k in dict.fromkeys(k for r in records for k in r) if k.startswith("loss_")]
    for f in families:
        line(ax, f"loss_{f}", f)
    ax.set_title("loss per family")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
