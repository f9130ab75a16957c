"""The CIFAR-10 recipe study: short runs of the shipped ``cifar10_equi`` config, one change each,
measured the same way (kNN top-1 of the target encoder, MRR on a 256-entry bank, seconds per
step), so that what makes the representation and the world model learn fastest per CPU-minute
is measured rather than guessed. Results go to a markdown page with the raw JSON beside it.

    iwm study recipe --steps 500 --out docs/results/recipe.md

Each variant is trained in ``runs_dir/<name>`` once and its measurement cached beside it
(``recipe_measure.json``), so the study resumes, and two processes can split the variants
(``--only a,b``) before a last call writes the page.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..config import Config
from ..eval.knn import knn_eval
from ..eval.mrr import compute_mrr
from ..train import resolve_device
from .grid import GridRun, code_version, device_name, ensure_trained, run_config
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


def measure(cfg: Config, mrr_images: int, mrr_bank: int, device: torch.device) -> dict:
    """kNN and MRR of the trained run in cfg.run.out_dir, and its training speed; cached."""
    from ..api import load

    out = Path(cfg.run.out_dir)
    cache = out / "recipe_measure.json"
    run = load(out, device=device)
    key = {"step": run.step, "mrr_images": mrr_images, "mrr_bank": mrr_bank, "knn_train": cfg.eval.knn_train,
           "knn_test": cfg.eval.knn_test}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached
    knn = knn_eval(run.target_encoder, cfg, device)
    mrr = compute_mrr(run, num_images=mrr_images, bank_size=mrr_bank, families=("all",), seed=0, device=device)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind", "train") == "train"]  # not the health rows
    rates = [r["images_per_s"] for r in train[1:] if r.get("images_per_s")]  # the first interval holds the start-up
    losses = [r["loss"] for r in train]
    res = {"key": key, "knn_top1": knn["top1"], "mrr": mrr["families"]["all"]["mrr"],
           "mrr_action_zeroed": mrr["families"]["all"]["mrr_action_zeroed"], "chance": mrr["chance"],
           "images_per_s": sum(rates) / len(rates) if rates else None,
           "final_loss": sum(losses[-5:]) / max(1, len(losses[-5:])), "measured": time.time()}
    write_text(cache, json.dumps(res, indent=2))
    return res


def run_study(out_md: Path | None, runs_dir: Path, steps: int, mrr_images: int, mrr_bank: int,
              extra_overrides: list[str], device: str, only: list[str] | None, command: str) -> dict:
    runs_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    code = code_version()
    results = {}
    for run in variant_runs(only):
        cfg = run_config(run, runs_dir, steps, extra_overrides, device)
        ensure_trained(cfg, steps)
        results[run.name.removeprefix("recipe_")] = {"overrides": list(run.overrides),
                                                     **measure(cfg, mrr_images, mrr_bank, dev)}
    study = {"device": device_name(dev), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "code": code, "command": command,
             "settings": {"steps": steps, "mrr_images": mrr_images, "mrr_bank": mrr_bank,
                          "extra_overrides": extra_overrides},
             "runs": results}
    if out_md is not None:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        write_text(out_md.with_suffix(".json"), json.dumps(study, indent=2))
        write_text(out_md, place_table(out_md.read_text() if out_md.exists() else "", render_table(study)))
    return study


TABLE_BEGIN, TABLE_END = "<!-- iwm study recipe: table -->", "<!-- end of the table -->"


def place_table(page: str, table: str) -> str:
    """``page`` with its measured table replaced by ``table``. The reading around it is written by
    hand, so it is kept: a page without the markers gets the table appended, never overwritten."""
    block = f"{TABLE_BEGIN}\n{table}{TABLE_END}\n"
    if TABLE_BEGIN in page and TABLE_END in page:
        head, rest = page.split(TABLE_BEGIN, 1)
        return head + block + rest.split(TABLE_END, 1)[1].removeprefix("\n")
    return f"{page.rstrip()}\n\n{block}" if page.strip() else block


def render_table(study: dict) -> str:
    """The measured table; the reading around it is written by hand on the results page."""
    what = {n: w for n, _, w in VARIANTS}
    base = study["runs"].get("base")
    lines = [f"Measured on {study['device']}, {study['date']}, {study['code']}: `{study['command']}` "
             f"({study['settings']['steps']} steps of 128 images per run; MRR on "
             f"{study['settings']['mrr_images']} test images x {study['settings']['mrr_bank']} bank entries).",
             "",
             "| variant | change | kNN top-1 | Δ kNN | MRR | MRR, a zeroed | final loss | images/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in study["runs"].items():
        d = f"{100 * (r['knn_top1'] - base['knn_top1']):+.2f}" if base else ""
        rate = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "n/a"
        lines.append(f"| {name} | {what.get(name, '')} | {100 * r['knn_top1']:.2f} % | {d} | {r['mrr']:.4f} | "
                     f"{r['mrr_action_zeroed']:.4f} | {r['final_loss']:.4f} | {rate} |")
    return "\n".join(lines) + "\n"


def _main(args: argparse.Namespace) -> int:
    only = [s for s in args.only.split(",") if s] if args.only else None
    command = shlex.join(["iwm", "study", "recipe", "--steps", str(args.steps), "--runs-dir", args.runs_dir,
                          *(["--only", args.only] if args.only else []), *args.overrides])
    try:
        run_study(Path(args.out) if args.out else None, Path(args.runs_dir), args.steps, args.mrr_images,
                  args.mrr_bank, args.overrides, args.device, only, command)
    except ValueError as err:
        print(f"iwm: error: {err}", file=sys.stderr)
        return 2
    return 0


def add_cli(studies: argparse._SubParsersAction) -> None:
    """Register ``iwm study recipe``."""
    r = studies.add_parser("recipe", help="short cifar10_equi runs, one change each: what learns fastest")
    r.add_argument("--steps", type=int, default=500, help="optimizer steps per run (default 500)")
    r.add_argument("--mrr-images", type=int, default=32, help="MRR test images (default 32)")
    r.add_argument("--mrr-bank", type=int, default=256, help="MRR bank size (default 256)")
    r.add_argument("--runs-dir", default="runs/recipe", help="one directory per run (default runs/recipe)")
    r.add_argument("--only", default="", help="comma-separated variants to run (default all)")
    r.add_argument("--out", default="", help="markdown page to write the table into, keeping its other text "
                                           "(default: none)")
    r.add_argument("--device", default="auto")
    r.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. data.path=...")
    r.set_defaults(fn=_main)
