"""The CIFAR-10 recipe study: short runs of the shipped ``cifar10_equi`` config, one change each,
measured the same way (kNN top-1 of the target encoder, MRR on a 256-entry bank, seconds per
step), so that what makes the representation and the world model learn fastest per CPU-minute
is measured rather than guessed. Results go to a markdown page with the raw JSON beside it.

    iwm study recipe --steps 500 --out docs/results/recipe.md

Variants are compared, and one chosen, on a validation split carved from the train split (train
images held out from the kNN bank, :mod:`iwm.eval.validation`); the test split is then scored
once, for the chosen variant only, and reported apart. Choosing on test and reporting the same
number would overstate the chosen variant.

Each variant is trained in ``runs_dir/<name>`` once and its measurement cached beside it
(``recipe_measure.json``), so the study resumes, and two processes can split the variants
(``--only a,b``, no ``--out``: validation only) before a last call chooses, scores the test split
and writes the page.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..config import Config
from ..eval.knn import knn_eval
from ..eval.mrr import compute_mrr
from ..eval.validation import VALIDATION_SEED, knn_validation, validation_sets
from ..train import resolve_device
from ..version import code_version
from .grid import GridRun, device_name, ensure_trained, run_config
from .page import code_note, describe_data, replace_marked
from ..files import write_text

# (name, overrides on cifar10_equi, what it tests)
VARIANTS: list[tuple[str, tuple[str, ...], str]] = [
    ("base", (), "shipped cifar10_equi: paper's augmentations, whole contexts"),
    ("residual", ("predictor.cond_residual=true",), "feature conditioning as m + MLP([m, a])"),
    ("lr2x", ("optim.lr=0.002", "optim.start_lr=0.0004"), "twice the learning rate"),
    ("old_aug", ("aug.saturation=0.4", "aug.solarize_prob=0.2"), "the former augmentations (saturation 0.4, "
                                                                  "solarize 0.2)"),
    ("ema996", ("optim.ema=[0.996,1.0]",), "I-JEPA's EMA schedule (0.996 -> 1)"),
    ("two_targets", ("mask.num_targets=2",), "2 target blocks instead of 4"),
    ("wide_pred", ("predictor.width=128", "predictor.num_heads=4"), "predictor width 128 (as the encoder)"),
    ("smooth_l1", ("optim.loss=smooth_l1",), "smooth L1 loss instead of squared L2"),
    ("cut_context", ("mask.cut_context=true",), "I-JEPA's context cut to the batch's shortest"),
]


def variant_runs(only: list[str] | None = None) -> list[GridRun]:
    names = {n for n, _, _ in VARIANTS}
    unknown = sorted(set(only or ()) - names)
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(sorted(names))}")
    return [GridRun(f"recipe_{n}", "cifar10_equi", o, ("recipe",)) for n, o, _ in VARIANTS
            if not only or n in only]


def measure(cfg: Config, val_images: int, mrr_images: int, mrr_bank: int, device: torch.device) -> dict:
    """Validation kNN and MRR of the trained run in cfg.run.out_dir (train images held out from
    the bank; never the test split), and its training speed; cached."""
    from ..api import load

    out = Path(cfg.run.out_dir)
    cache = out / "recipe_measure.json"
    run = load(out, device=device)
    key = {"step": run.step, "split": "validation", "val_images": val_images, "val_seed": VALIDATION_SEED,
           "mrr_images": mrr_images, "mrr_bank": mrr_bank, "mrr_source": "clean", "knn_train": cfg.eval.knn_train}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached
    bank, queries = validation_sets(cfg, val_images)
    knn = knn_validation(run.target_encoder, bank, queries, cfg, device)
    # MRR's images are validation queries too: any number the variants are compared by stays off test
    images = torch.stack([queries[i][0] for i in range(min(mrr_images, len(queries)))])
    mrr = compute_mrr(run, images=images, bank_size=mrr_bank, seed=0, device=device, source="clean")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind", "train") == "train"]  # not the health rows
    rates = [r["images_per_s"] for r in train[1:] if r.get("images_per_s")]  # the first interval holds the start-up
    losses = [r["loss"] for r in train]
    res = {"key": key, "val_knn_top1": knn["top1"], "val_bank": knn["bank"], "val_queries": knn["queries"],
           "mrr": mrr["mrr"], "chance": mrr["chance"], "images_per_s": sum(rates) / len(rates) if rates else None,
           "final_loss": sum(losses[-5:]) / max(1, len(losses[-5:])), "measured": time.time()}
    write_text(cache, json.dumps(res, indent=2))
    return res


def choose(runs: dict[str, dict]) -> str:
    """The variant with the best validation kNN top-1; on a tie, the first listed."""
    return max(runs, key=lambda name: runs[name]["val_knn_top1"])  # max keeps the first of equals


def measure_test(cfg: Config, device: torch.device) -> dict:
    """kNN top-1 on the test split (the usual protocol, :func:`iwm.eval.knn.knn_eval`) of the
    run in cfg.run.out_dir; only ever called for the chosen variant. Cached beside the run."""
    from ..api import load

    out = Path(cfg.run.out_dir)
    cache = out / "recipe_test.json"
    run = load(out, device=device)
    key = {"step": run.step, "knn_train": cfg.eval.knn_train, "knn_test": cfg.eval.knn_test}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached
    knn = knn_eval(run.target_encoder, cfg, device)
    res = {"key": key, "knn_top1": knn["top1"], "bank": knn["bank"], "test": knn["test"], "measured": time.time()}
    write_text(cache, json.dumps(res, indent=2))
    return res


def run_study(out_md: Path | None, runs_dir: Path, steps: int, mrr_images: int, mrr_bank: int,
              extra_overrides: list[str], device: str, only: list[str] | None, command: str,
              val_images: int = 5000, score_test: bool = True) -> dict:
    """Train and measure the variants on validation, choose one by validation kNN top-1, and
    (``score_test``) score the test split for the chosen one alone. ``val_images``: train images
    held out from the kNN bank as validation queries."""
    if mrr_images < 1:
        raise ValueError(f"--mrr-images: need at least 1, got {mrr_images}")
    runs_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    code = code_version()
    results, configs = {}, {}
    for run in variant_runs(only):
        name = run.name.removeprefix("recipe_")
        configs[name] = cfg = run_config(run, runs_dir, steps, extra_overrides, device)
        ensure_trained(cfg, steps)
        results[name] = {"overrides": list(run.overrides), **measure(cfg, val_images, mrr_images, mrr_bank, dev)}
    chosen = choose(results)
    # the one read of the test split, after the choice is made
    test = measure_test(configs[chosen], dev) if score_test else None
    data = next(iter(configs.values())).data
    study = {"device": device_name(dev), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "code": code, "command": command, "data": describe_data(data.dataset, data.path),
             "settings": {"steps": steps, "val_images": val_images, "mrr_images": mrr_images, "mrr_bank": mrr_bank,
                          "extra_overrides": extra_overrides},
             "selection": "validation kNN top-1 (train images held out from the bank); test scored for the "
                          "chosen variant only",
             "chosen": {"variant": chosen, "val_knn_top1": results[chosen]["val_knn_top1"],
                        "test_knn_top1": test["knn_top1"] if test else None, "test": test},
             "runs": results}
    if out_md is not None:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        write_text(out_md.with_suffix(".json"), json.dumps(study, indent=2))
        write_text(out_md, place_table(out_md.read_text() if out_md.exists() else "", render_table(study)))
    return study


def chosen_line(study: dict) -> str:
    """The result: the variant validation chose, and apart from it, its one test score."""
    c = study["chosen"]
    line = f"chosen on validation: {c['variant']} (kNN top-1 {100 * c['val_knn_top1']:.2f} %); its test score: "
    if c["test"] is None:
        return line + "not scored in this call"
    return line + (f"{100 * c['test_knn_top1']:.2f} % (kNN top-1 on {c['test']['test']} test images, bank of "
                   f"{c['test']['bank']} train images; the test split scored once, for this variant only)")


TABLE_BEGIN, TABLE_END = "<!-- iwm study recipe: table -->", "<!-- end of the table -->"


def place_table(page: str, table: str) -> str:
    """``page`` with its measured table replaced by ``table``. The reading around it is written by
    hand, so it is kept: a page without the markers gets the table appended, never overwritten."""
    return replace_marked(page, TABLE_BEGIN, TABLE_END, table)


def render_table(study: dict) -> str:
    """The measured table and the choice; the reading around them is written by hand on the
    results page."""
    what = {n: w for n, _, w in VARIANTS}
    base = study["runs"].get("base")
    first = next(iter(study["runs"].values()))
    note = code_note([study["code"]])
    lines = [f"Measured on {study['device']}, {study['date']}, {study['code']}{f' ({note})' if note else ''}, "
             f"on {study.get('data', 'data not recorded')}: `{study['command']}` "
             f"({study['settings']['steps']} steps of 128 images per run; validation: "
             f"{first['val_queries']} train images held out from a kNN bank of {first['val_bank']} other train "
             f"images; MRR on {study['settings']['mrr_images']} of those validation images x "
             f"{study['settings']['mrr_bank']} bank entries). Every column is measured on validation; the test "
             "split is scored for the chosen variant alone, below the table.",
             "",
             "| variant | change | kNN top-1, validation | Δ kNN | MRR, clean source | chance | final loss "
             "| images/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in study["runs"].items():
        d = f"{100 * (r['val_knn_top1'] - base['val_knn_top1']):+.2f}" if base else ""
        rate = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "n/a"
        lines.append(f"| {name} | {what.get(name, '')} | {100 * r['val_knn_top1']:.2f} % | {d} | {r['mrr']:.4f} | "
                     f"{r['chance']:.4f} | {r['final_loss']:.4f} | {rate} |")
    line = chosen_line(study)
    lines += ["", line[0].upper() + line[1:] + "."]
    return "\n".join(lines) + "\n"
