"""The efficiency study: which recipe learns most per CPU minute?

Each recipe is the paper's recipe on CIFAR-10 (``cifar10_equi``) with one lever moved: SIGReg
beside the EMA target or in place of it, shorter-horizon schedules, the batch size, the network's
width and depth, the mask scales. Each is trained for ``steps`` steps with a checkpoint every ``every``
steps, the health checks off (they would cost the budget), and each checkpoint's target encoder
is scored by kNN on a **validation split carved from the train split**
(:mod:`iwm.eval.validation`: the demo's protocol, k = 20, cosine, on other images), beside the raw
pixels on the same images. The minutes are training minutes, from the rates the run logged.
At the end of each run its world model is scored by MRR (the paper's protocol, the clean
source), beside chance: a recipe must not trade the world model away for kNN.

The recipes are chosen on validation only; the best ``finalists`` are trained again on other seeds.
Every measurement is stored in ``runs_dir/efficiency.json`` with what decided it and reused by the
next call, so the study resumes where it stopped.

    iwm study efficiency --steps 800 --every 200 --out docs/results/efficiency.md
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..eval.mrr import chance_mrr, compute_mrr, eval_images
from ..eval.pixels import RawPixels
from ..eval.validation import knn_validation, validation_sets
from ..downstream.report import write_json
from ..files import write_text
from ..train import resolve_device
from ..version import code_version
from ..viz.study_plots import knn_by_minutes
from .grid import GridRun, device_name, ensure_trained, run_config, settings_digest
from .page import RAW_NUMBERS, VERDICT, describe_data, provenance, table
from .reference import random_init, read_metrics, training_minutes

BASE = "cifar10_equi"


def _recipe(name: str, *overrides: str) -> GridRun:
    return GridRun(name, BASE, overrides, ("efficiency",))


# label -> the run; the first is the shipped recipe every other moves one lever of
RECIPES: dict[str, GridRun] = {
    "shipped recipe": _recipe("shipped"),
    "SIGReg beside the EMA target": _recipe("sigreg_ema", "optim.regularizer=sigreg"),
    "SIGReg, no teacher": _recipe("sigreg_online", "optim.target=online", "optim.regularizer=sigreg"),
    "SIGReg on every token, no teacher": _recipe("sigreg_online_tokens", "optim.target=online",
                                                 "optim.regularizer=sigreg", "optim.reg_embeddings=tokens",
                                                 "optim.sigreg_directions=256"),
    "faster EMA (0.95 -> 1), no warm-up": _recipe("short_horizon", "optim.ema=[0.95,1.0]", "optim.warmup=0.0"),
    "learning rate 2e-3": _recipe("lr2e-3", "optim.lr=0.002"),
    "batch 64": _recipe("batch64", "data.batch_size=64"),
    "encoder width 96": _recipe("width96", "model.embed_dim=96", "model.num_heads=3"),
    "predictor depth 2": _recipe("pred_d2", "predictor.depth=2"),
    "larger target blocks (0.2-0.3)": _recipe("targets_large", "mask.target_scale=[0.2,0.3]"),
}
STORE = "efficiency.json"


def curve(run_dir: Path, cfg, every: int, steps: int, bank: Dataset, query: Dataset,
          device: torch.device) -> list[dict]:
    """kNN on the validation ``query`` images against ``bank`` (:func:`validation_sets`) at each
    checkpoint (``every`` steps), with the training minutes to it."""
    from ..api import load

    minutes = training_minutes(read_metrics(run_dir), cfg.data.batch_size)
    points = []
    for step in range(every, steps + 1, every):
        run = load(run_dir / "checkpoints" / f"step-{step:08d}.pt", device=device)
        r = knn_validation(run.target_encoder, bank, query, run.config, device)
        points.append({"step": step, "minutes": minutes.get(step), "knn": r["top1"]})
    return points


def minutes_to_pass(points: list[dict], pixels: float) -> float | None:
    """Training minutes at which validation kNN first reaches the pixels' (linear between the
    measured points), or None where it never does."""
    prev = {"minutes": 0.0, "knn": None}
    for p in points:
        if p["minutes"] is not None and p["knn"] >= pixels:
            if prev["knn"] is None or prev["knn"] >= pixels:
                return p["minutes"]
            frac = (pixels - prev["knn"]) / (p["knn"] - prev["knn"])
            return prev["minutes"] + frac * (p["minutes"] - prev["minutes"])
        prev = p
    return None


def run_study(out_md: Path, runs_dir: Path, steps: int, every: int, queries: int, extra_overrides: list[str],
              device: str = "auto", command: str | None = None, seeds: int = 2, finalists: int = 2,
              mrr_images: int = 64, mrr_bank: int = 64, recipes: dict[str, GridRun] | None = None) -> dict:
    """Train (or reuse) every recipe, score its checkpoints on validation, then train the
    ``finalists`` best again on seeds 1 .. ``seeds`` - 1; write the store, the page and its plot."""
    from ..api import load

    recipes = recipes or RECIPES
    out_md, runs_dir = Path(out_md), Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    store = runs_dir / STORE
    previous = _read(store)
    study: dict[str, Any] = {"device": device_name(dev), "command": command, "code": code_version(), "runs": {},
                             "settings": {"steps": steps, "every": every, "queries": queries, "seeds": seeds,
                                          "finalists": finalists, "mrr_images": mrr_images, "mrr_bank": mrr_bank,
                                          "extra_overrides": list(extra_overrides)}}
    extra = [*extra_overrides, "eval.every=0", f"run.ckpt_every={every}", f"run.keep={steps // every + 1}"]

    def measure(label: str, grid: GridRun, seed: int) -> dict:
        name = f"{grid.name}_seed{seed}"
        run_grid = GridRun(name, grid.config, (*grid.overrides, f"run.seed={seed}"), grid.tables)
        cfg = run_config(run_grid, runs_dir, steps, extra, device)
        ensure_trained(cfg, steps)
        final = load(cfg.run.out_dir, device=dev)
        key = {"steps": steps, "every": every, "queries": queries, "settings": settings_digest(final, "knn"),
               "mrr": [mrr_images, mrr_bank]}
        done = previous.get(name)
        if done is None or done.get("key") != key:
            r = compute_mrr(final, images=eval_images(final, mrr_images, 0), bank_size=mrr_bank, seed=0, device=dev)
            rand = random_init(cfg, dev).target_encoder  # the floor the training starts from
            done = {"key": key, "label": label, "seed": seed,
                    "random_init": knn_validation(rand, bank, query, cfg, dev)["top1"],
                    "curve": curve(Path(cfg.run.out_dir), cfg, every, steps, bank, query, dev),
                    "mrr": r["mrr"], "mrr_chance": chance_mrr(mrr_bank), "images": cfg.data.batch_size}
        study["runs"][name] = done
        write_json({**study, "runs": {**previous, **study["runs"]}}, store)  # a finished run survives a stop
        return done

    first = next(iter(recipes.values()))
    base = run_config(first, runs_dir, steps, extra, device)
    bank, query = validation_sets(base, queries)
    study["pixels"] = knn_validation(RawPixels.of(base), bank, query, base, dev)["top1"]
    study["data"] = describe_data(base.data.dataset, base.data.path)
    for label, grid in recipes.items():
        measure(label, grid, 0)
        _publish(study, out_md)
    ranked = sorted(recipes, key=lambda lb: -study["runs"][f"{recipes[lb].name}_seed0"]["curve"][-1]["knn"])
    study["finalists"] = ranked[:finalists]
    for label in study["finalists"]:
        for seed in range(1, seeds):
            measure(label, recipes[label], seed)
            _publish(study, out_md)
    return study


def _read(store: Path) -> dict:
    return json.loads(store.read_text())["runs"] if store.is_file() else {}


def _publish(study: dict, out_md: Path) -> None:
    study["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    write_json(study, out_md.with_suffix(".json"))
    curves = {r["label"]: [(p["minutes"] or 0.0, p["knn"]) for p in r["curve"]] for r in study["runs"].values()
              if r["seed"] == 0}
    knn_by_minutes(out_md.with_suffix(".png"), curves, study["pixels"])
    write_text(out_md, render_markdown(study, out_md.with_suffix(".png").name))


def render_markdown(study: dict, plot: str) -> str:
    s = study["settings"]
    pixels = study["pixels"]
    by_label: dict[str, list[dict]] = {}
    for r in study["runs"].values():
        by_label.setdefault(r["label"], []).append(r)
    rows = []
    for label, runs in by_label.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        last = [r["curve"][-1] for r in runs]
        passed = [minutes_to_pass(r["curve"], pixels) for r in runs]
        rows.append([label, len(runs), " / ".join(f"{100 * r['random_init']:.2f}" for r in runs),
                     " / ".join(f"{100 * p['knn']:.2f}" for p in last),
                     " / ".join(f"{p['minutes']:.1f}" if p["minutes"] is not None else "?" for p in last),
                     " / ".join(f"{m:.1f}" if m is not None else "not within the run" for m in passed),
                     " / ".join(f"{r['mrr']:.4f}" for r in runs), f"{runs[0]['mrr_chance']:.4f}"])
    return "\n".join([
        "# Learning per CPU minute: recipes against the raw pixels (CIFAR-10)", "",
        *provenance(study),
        f"- training: {s['steps']} steps each, `{BASE}` with one lever moved per recipe, a checkpoint every "
        f"{s['every']} steps, health checks off; minutes are training minutes, from the rates each run logged",
        f"- kNN: the demo's protocol (k = 20, cosine, the target encoder's pooled tokens) on a validation split "
        f"carved from the train split ({s['queries']} queries, the bank from the other train images): "
        "never the test split; the raw pixels, and each recipe at its random init, by the same protocol on the same images",
        f"- MRR: the paper's protocol (the clean source) at the last step, {s['mrr_images']} test images x "
        f"{s['mrr_bank']} bank entries",
        f"- seeds: every recipe on seed 0; the {s['finalists']} best by final validation kNN on seeds up to "
        f"{s['seeds'] - 1} as well (figures per seed, separated by /)",
        RAW_NUMBERS, "",
        f"![validation kNN against training minutes]({plot})", "",
        *table(["recipe", "seeds", "validation kNN at random init (%)", "validation kNN at the end (%)", "minutes",
                "minutes to pass the pixels",
                "MRR (the paper's protocol)", "chance"], rows), "",
        f"Raw pixels on the same validation images: {100 * pixels:.2f} %.", "",
        VERDICT, ""])
