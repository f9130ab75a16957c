"""The abstraction-spectrum study of the paper's Table 8 and Figures 4-5, measured on CIFAR-10
(in domain) and CamVid segmentation (out of domain): how the world model's strength moves the
representation between the abstract (invariant, contrastive-like) end and the rich
(equivariant, MIM-like) end.

Three pretrainings, the same runs :mod:`.world_model` trains (so a directory shared with that
study is trained once):

- IWM-invariant: ``weak_d1`` (weak transformations, a 1-block predictor: a weak world model);
- IWM-equivariant: ``strong_d4`` (strong transformations, a 4-block predictor);
- I-JEPA: ``ijepa`` (no photometric transformation, no conditioning).

Each is evaluated, on its frozen target encoder, by kNN, a linear probe, an attentive probe and
predictor finetuning (the protocols in :mod:`iwm.downstream`), and by a light segmentation
decoder on CamVid, fed the encoder's tokens and the finetuned predictor's tokens. Predictor
finetuning follows the paper: an attentive head, the pretrained predictor at
``--predictor-lr-ratio`` (0.1) times the learning rate of the head and of the random predictor.
With ``--table4`` the equivariant run also gets encoder finetuning, end-to-end finetuning and
the random-predictor control (the paper's Table 4 and Figure 3); with ``--multitask``,
multi-task predictor tuning against single-task tuning (Table 7).

The raw pixels go through the same probes (kNN, linear, attentive): the reference every
model's row is read against, since a representation that does not beat its own input has not
earned its training.

Every finished evaluation is stored in ``runs_dir/leverage.json`` at once with its settings and
a digest of the run's training settings; a second call with the same settings on the same run
reuses it, so the study resumes where it stopped. The page
states no conclusion: a placeholder per table is left for whoever reads the numbers.

    iwm study leverage --out docs/results/leverage.md
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from ..config import encoder_dims
from ..downstream.segdata import DEFAULT_SEG_DATA
from ..downstream.finetune import HEADS, PREDICTOR_LR_RATIO
from ..downstream.probes import PIXELS  # the reference row: the probes on the images themselves
from ..files import write_text
from ..viz.study_plots import protocol_spectrum
from ..train import resolve_device
from ..version import code_version
from .grid import GridRun, device_name, ensure_trained, run_config, settings_digest
from .page import RAW_NUMBERS, VERDICT, describe_data, provenance, table
from .world_model import GRID


class Model(NamedTuple):
    label: str
    run: str  # a GridRun name of the world-model study
    paper: str  # the paper's claim for this end of the spectrum


MODELS = (
    Model("IWM-invariant", "weak_d1", "like contrastive methods: clearly better in linear probing than MIM and "
                                      "other JEPAs"),
    Model("IWM-equivariant", "strong_d4", "like MIM: weaker linearly, competitive in attentive probing, best "
                                          "with predictor finetuning and out of domain"),
    Model("I-JEPA", "ijepa", "among the 'other JEPA methods' the invariant IWM beats in linear probing"),
)
PIXEL_KINDS = ("knn", "linear", "attentive")  # the protocols that need no pretrained network
# classification evaluations, from the simplest head to the most flexible one (Figure 5's axis)
CLASSIFICATION = ("knn", "linear", "attentive", "predictor_ft")
SEGMENTATION = ("seg_encoder", "seg_predictor")
TABLE4 = ("encoder", "end2end", "random_predictor")  # beside predictor_ft, on the equivariant run
FINETUNING = ("predictor_ft", *TABLE4, "multitask")  # the evaluations that train on augmented views
LABELS = {"knn": "kNN", "linear": "linear probe", "attentive": "attentive probe", "predictor_ft": "predictor FT",
          "seg_encoder": "encoder tokens", "seg_predictor": "finetuned predictor tokens",
          "encoder": "encoder FT", "end2end": "end-to-end FT", "random_predictor": "random predictor FT",
          "multitask": "multi-task predictor tuning"}


def grid_run(name: str) -> GridRun:
    return next(r for r in GRID if r.name == name)


def default_settings() -> dict[str, Any]:
    """Sized for two CPU cores: about 10 minutes per pretrained model, 25 more with
    ``--table4 --multitask``."""
    return {"train_size": 5000, "test_size": 0, "seed": 0, "attentive_epochs": 10, "finetune_epochs": 5,
            "finetune_batch": 128, "finetune_lr": 5e-4, "predictor_lr_ratio": PREDICTOR_LR_RATIO,
            "seg_epochs": 20, "seg_batch": 32, "seg_lr": 1e-3,
            "seg_data": DEFAULT_SEG_DATA}


# ----------------------------------------------------------------------------------------------
# one evaluation


def evaluate(run, kind: str, s: dict[str, Any], device: torch.device, progress: bool, pixels: bool = False) -> dict:
    """One evaluation of a loaded run: {"top1" or "miou"/"pixel_acc", "trainable_params", ...};
    with ``pixels``, a probe of :data:`PIXEL_KINDS` on the raw pixels at the run's image size."""
    from ..downstream.data import eval_set, train_set

    if kind in ("knn", "linear", "attentive"):
        from ..downstream.probes import run_probes

        train = train_set(run, size=s["train_size"], seed=s["seed"], augment=False)
        test = eval_set(run, size=s["test_size"], seed=s["seed"])
        epochs = s["attentive_epochs"] if kind == "attentive" else None
        (row,) = run_probes(run, [kind], train, test, encoder="pixels" if pixels else "target", epochs=epochs,
                            seed=s["seed"], device=device, progress=progress)
        return row
    if pixels:
        raise ValueError(f"{kind!r} has no raw-pixel reference; those are {', '.join(PIXEL_KINDS)}")
    if kind in ("predictor_ft", *TABLE4):
        from ..downstream.finetune import run_protocols

        train = train_set(run, size=s["train_size"], seed=s["seed"], augment=True)
        test = eval_set(run, size=s["test_size"], seed=s["seed"])
        protocol = "predictor" if kind == "predictor_ft" else kind
        (row,) = run_protocols(run, [protocol], train, test, epochs=s["finetune_epochs"],
                               batch_size=s["finetune_batch"], lr=s["finetune_lr"], seed=s["seed"], device=device,
                               progress=progress, predictor_lr_ratio=s["predictor_lr_ratio"])
        return row
    if kind == "multitask":
        from ..downstream.data import num_classes
        from ..downstream.multitask import compare_multitask, default_tasks, parse_tasks

        train = train_set(run, size=s["train_size"], seed=s["seed"], augment=True)
        test = eval_set(run, size=s["test_size"], seed=s["seed"])
        classes = num_classes(train, test)
        tasks = parse_tasks(default_tasks(classes, run.config.data.dataset), classes)
        res = compare_multitask(run, tasks, train, test, epochs=s["finetune_epochs"], batch_size=s["finetune_batch"],
                                lr=s["finetune_lr"], seed=s["seed"], progress=progress)
        return {**res, "trainable_params": res["multi"]["trainable_params"], "seconds": res["multi"]["seconds"]}
    if kind in SEGMENTATION:
        from ..downstream.segmentation import run_segmentation, segmentation_sets

        train, val = segmentation_sets(run, s["seg_data"], seed=s["seed"])
        source = kind.removeprefix("seg_")
        (row,) = run_segmentation(run, [source], train, val, train.num_classes(), epochs=s["seg_epochs"],
                                  batch_size=s["seg_batch"], lr=s["seg_lr"], seed=s["seed"], device=device,
                                  progress=progress)
        row.pop("confusion", None)  # large; the per-class IoU stays
        return row
    raise ValueError(f"unknown evaluation {kind!r}")


def setting_key(kind: str, s: dict[str, Any], step: int) -> dict[str, Any]:
    """What decides an evaluation's result: a stored result with another key is redone."""
    keys = ["train_size", "test_size", "seed"]
    if kind == "attentive":
        keys += ["attentive_epochs"]
    if kind in FINETUNING:
        keys += ["finetune_epochs", "finetune_batch", "finetune_lr"]
    if kind == "predictor_ft":
        keys += ["predictor_lr_ratio"]
    if kind in SEGMENTATION:
        keys = ["seed", "seg_epochs", "seg_batch", "seg_lr", "seg_data"]
    key = {"step": step, **{k: s[k] for k in keys}}
    if kind in ("predictor_ft", *TABLE4):  # results stored before the heads differed are redone
        key["head"] = HEADS["predictor" if kind == "predictor_ft" else kind]
    return key


# ----------------------------------------------------------------------------------------------
# the study


def run_study(out_md: Path, runs_dir: Path, steps: int, settings: dict[str, Any], extra_overrides: list[str],
              device: str = "auto", table4: bool = False, multitask: bool = False, command: str | None = None,
              only: Sequence[str] = (),
              progress: bool = True) -> dict:
    """Train (or reuse) the three runs, evaluate each, write ``runs_dir/leverage.json``,
    ``out_md`` and ``leverage_spectrum.png`` beside it. Returns the study dict."""
    from ..api import load
    from ..downstream.segdata import seg_root

    seg_root(settings["seg_data"])  # missing segmentation data: refused now, not after the pretrainings
    out_md, runs_dir = Path(out_md), Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    store = runs_dir / "leverage.json"
    previous = json.loads(store.read_text())["models"] if store.is_file() else {}
    study: dict[str, Any] = {"device": device_name(dev), "command": command, "code": code_version(),
                             "settings": {**settings, "steps": steps, "extra_overrides": list(extra_overrides)},
                             "models": {}}
    unknown = sorted(set(only) - {m.run for m in MODELS})
    if unknown:
        raise ValueError(f"--only: unknown run(s) {', '.join(unknown)}; choose from {', '.join(m.run for m in MODELS)}")
    for model in MODELS:
        if only and model.run not in only:
            continue
        cfg = run_config(grid_run(model.run), runs_dir, steps, extra_overrides, device)
        ensure_trained(cfg, steps)
        run = load(cfg.run.out_dir, device=dev)
        kinds = [*CLASSIFICATION, *SEGMENTATION]
        if model.run == "strong_d4":  # the paper's finetuning comparisons are on the equivariant IWM
            kinds += [*(TABLE4 if table4 else ()), *(["multitask"] if multitask else [])]
        done = previous.get(model.label, {}).get("evals", {})
        evals = {}
        for kind in kinds:
            # the run's settings too: a grid run retrained with another config ends at the same step
            key = {**setting_key(kind, settings, run.step), "settings": settings_digest(run, kind)}
            if kind in done and done[kind]["key"] == key:
                evals[kind] = done[kind]
                continue
            evals[kind] = {"key": key, "device": device_name(dev), **evaluate(run, kind, settings, dev, progress)}
            study["models"][model.label] = {"run": model.run, "step": run.step, "evals": evals}
            _write(store, study, previous)  # a finished evaluation survives a stop
        study["models"][model.label] = {"run": model.run, "step": run.step, "evals": evals}
    # the same probes on the raw pixels (of the last run's data and image size: every run shares them)
    done, evals = previous.get(PIXELS, {}).get("evals", {}), {}
    for kind in PIXEL_KINDS:
        key = setting_key(kind, settings, 0)
        if kind in done and done[kind]["key"] == key:
            evals[kind] = done[kind]
            continue
        evals[kind] = {"key": key, "device": device_name(dev), **evaluate(run, kind, settings, dev, progress, True)}
        study["models"][PIXELS] = {"run": None, "step": 0, "evals": evals}
        _write(store, study, previous)
    study["models"][PIXELS] = {"run": None, "step": 0, "evals": evals}
    study["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if only:  # re-measuring some rows: the stored results are updated, the page needs every model
        _write(store, study, previous)
        return study
    first = run_config(grid_run(MODELS[0].run), runs_dir, steps, extra_overrides, device)
    dim, depth, heads = encoder_dims(first.model)
    study["settings"].update(dataset=first.data.dataset, image_size=first.data.image_size,
                             patch_size=first.model.patch_size, batch_size=first.data.batch_size,
                             encoder={"embed_dim": dim, "depth": depth, "num_heads": heads})
    study["data"] = describe_data(first.data.dataset, first.data.path)
    study["mrr"], study["mrr_protocol"] = _mrr_from_world_model_study(runs_dir, steps)
    _write(store, study, {})
    out_md.parent.mkdir(parents=True, exist_ok=True)
    _write(out_md.with_suffix(".json"), study, {})  # the raw numbers beside the page
    plot_spectrum(study, out_md.parent / "leverage_spectrum.png")
    write_text(out_md, render_markdown(study))
    return study


def _write(path: Path, study: dict, previous: dict) -> None:
    from ..downstream.report import write_json

    # models not reached yet keep their stored results until they are redone
    write_json({**study, "models": {**previous, **study["models"]}}, path)


def _mrr_from_world_model_study(runs_dir: Path, steps: int) -> tuple[dict[str, float], str | None]:
    """MRR of the three runs where the world-model study measured them at the same steps, and its
    protocol in words (None where there is none)."""
    path = runs_dir / "study.json"
    if not path.is_file():
        return {}, None
    ws = json.loads(path.read_text())
    if ws["settings"]["steps"] != steps:
        return {}, None
    # on the common strong bank where measured: comparable between the weak and strong runs
    values = {m.label: ws["runs"][m.run].get("mrr_strong_bank", ws["runs"][m.run]["mrr"])
              for m in MODELS if m.run in ws["runs"]}
    return values, (f"clean source (the paper's protocol), {ws['settings']['mrr_images']} test images x "
                    f"{ws['settings']['mrr_bank']}-entry bank")


# ----------------------------------------------------------------------------------------------
# the page


def _pct(row: dict | None, key: str = "top1") -> str:
    return "n/a" if row is None or row.get(key) is None else f"{100 * row[key]:.2f}"


def _header(study: dict) -> list[str]:
    s = study["settings"]
    enc = s["encoder"]
    train = "all" if not s["train_size"] else f"{s['train_size']:,}"
    test = "all 10,000" if not s["test_size"] else f"{s['test_size']:,}"
    return [
        "# Leveraging the world model: the abstraction spectrum (paper's Table 8, Figures 4-5)", "",
        *provenance(study),
        f"- pretraining: {s['steps']} steps, batch {s['batch_size']}, {s['dataset']} at {s['image_size']} px, "
        f"patch {s['patch_size']}; encoder ViT width {enc['embed_dim']}, depth {enc['depth']}, "
        f"{enc['num_heads']} heads; the runs of the world-model study "
        + ", ".join(f"`{m.run}` ({m.label})" for m in MODELS),
        f"- classification: CIFAR-10, {train} train images (seeded subset), {test} test images, frozen EMA "
        f"target encoder; kNN k=20 with these {train} train images as its bank; linear probe 100 epochs "
        f"(lr x wd picked on a held-out part of the train set); attentive probe {s['attentive_epochs']} epochs; finetuning {s['finetune_epochs']} "
        f"epochs, batch {s['finetune_batch']}, lr {s['finetune_lr']:g}, random-resized-crop + flip; predictor "
        f"finetuning with an attentive head, the pretrained predictor at {s['predictor_lr_ratio']:g} x lr",
        f"- segmentation: CamVid (`{Path(s['seg_data']).name}`), resized to {s['image_size']} px, light decoder "
        f"(LayerNorm + linear per token), {s['seg_epochs']} epochs, batch {s['seg_batch']}, lr {s['seg_lr']:g}; mIoU on the "
        "validation split at the labels' own resolution", RAW_NUMBERS, ""]


def _table8(study: dict) -> list[str]:
    models = study["models"]

    def cells(label: str) -> list[str]:
        ev = models[label]["evals"]
        return [_pct(ev.get(k)) for k in CLASSIFICATION] + [_pct(ev.get(k), "miou") for k in SEGMENTATION]

    rows = []
    for m in MODELS:
        mrr = study.get("mrr", {}).get(m.label)
        rows.append([m.label, "n/a" if mrr is None else f"{mrr:.4f}", *cells(m.label), m.paper])
    if PIXELS in models:
        rows.append([f"{PIXELS} (reference)", "n/a", *cells(PIXELS),
                     "the same probes on the images themselves: a representation has to beat this"])
    return ["## Table 8 analogue: one encoder, protocols of growing capacity", "",
            "Top-1 (%) on CIFAR-10, mIoU (%) on CamVid. MRR: the world-model study's measure of the same run, "
            f"ranked on the strong transformations; protocol: {study.get('mrr_protocol') or 'not recorded'}.",
            "", *table(["model", "MRR, " + (study.get("mrr_protocol") or "protocol not recorded").split(" (")[0],
                        "kNN", "linear", "attentive", "predictor FT", "CamVid mIoU, encoder",
                    "CamVid mIoU, predictor", "paper (qualitative)"], rows), "",
            "![top-1 by protocol, one line per model](leverage_spectrum.png)", "", VERDICT, ""]


def _costs(study: dict) -> list[str]:
    models, rows = study["models"], []
    for label in [m.label for m in MODELS] + ([PIXELS] if PIXELS in models else []):
        for k, row in models[label]["evals"].items():
            secs = row.get("seconds_per_epoch", row.get("seconds"))
            unit = "s / epoch" if "seconds_per_epoch" in row else "s in all"
            rows.append([label, LABELS[k], f"{row['trainable_params']:,}",
                         "n/a" if secs is None else f"{secs:.1f} {unit}"])
    return ["## Cost of each protocol", "",
            "Time: per training epoch, or in all (probe fits, whose features are extracted once; multi-task: "
            "the multi-task run).", "", *table(["model", "protocol", "trainable params", "time"], rows)]


def _table4(equi: dict) -> list[str]:
    if not any(k in equi for k in TABLE4):
        return []
    rows = []
    for k in (k for k in ("predictor_ft", *TABLE4) if k in equi):
        r, pred_lr = equi[k], equi[k]["settings"].get("predictor_lr")
        rows.append([LABELS[k], r["settings"].get("head", "pooled"), "-" if pred_lr is None else f"{pred_lr:g}",
                     _pct(r), f"{r['trainable_params']:,}", f"{r['seconds_per_epoch']:.1f}"])
    return ["", "## Table 4 analogue: finetuning protocols on IWM-equivariant", "",
            *table(["protocol", "head", "peak lr of the predictor", "top-1 (%)", "trainable params", "s / epoch"],
                   rows), "",
            "Paper: with an equivariant IWM, predictor finetuning on a frozen encoder matches or beats encoder "
            "finetuning at a fraction of the trainable parameters; a random predictor of the same architecture "
            "does not.", "", VERDICT]


def _table7(equi: dict) -> list[str]:
    if "multitask" not in equi:
        return []
    mt = equi["multitask"]
    m, t = mt["multi"], mt["single_total"]
    rows = [[r["task"], r["num_classes"], _pct(r, "multi_top1"), _pct(r, "single_top1")] for r in mt["rows"]]
    return ["", "## Table 7 analogue: multi-task predictor tuning on IWM-equivariant", "",
            "One predictor with a learned token per task, a head per task, each batch split evenly between the "
            "tasks; against one predictor tuned per task, each for the same epochs.", "",
            *table(["task", "classes", "multi-task top-1 (%)", "single-task top-1 (%)"], rows), "",
            f"Multi-task: one predictor, {m['trainable_params']:,} trainable parameters, {m['seconds']:.0f} s. "
            f"Single-task: {len(mt['rows'])} predictors, {t['trainable_params']:,} trainable parameters, "
            f"{t['seconds']:.0f} s.", "",
            "Paper: multi-task tuning of one predictor serves all tasks at a fraction of the cost of one predictor "
            "per task, with comparable accuracy.", "", VERDICT]


def render_markdown(study: dict) -> str:
    equi = study["models"]["IWM-equivariant"]["evals"]
    return "\n".join([*_header(study), *_table8(study), *_costs(study), *_table4(equi), *_table7(equi), ""])


def plot_spectrum(study: dict, path: Path) -> None:
    """Left: CIFAR-10 top-1 by protocol (simplest head first), one line per model. Right:
    CamVid mIoU per token source."""
    models = study["models"]
    top1 = {m.label: [100 * models[m.label]["evals"][k]["top1"] for k in CLASSIFICATION] for m in MODELS}
    miou = {m.label: [100 * (models[m.label]["evals"][k]["miou"] or 0.0) for k in SEGMENTATION] for m in MODELS}
    pixels = None
    if PIXELS in models:
        ev = models[PIXELS]["evals"]
        kinds = [k for k in CLASSIFICATION if k in ev]
        pixels = (f"{PIXELS} (reference)", [CLASSIFICATION.index(k) for k in kinds],
                  [100 * ev[k]["top1"] for k in kinds])
    protocol_spectrum(path, [LABELS[k] for k in CLASSIFICATION], top1, miou, ["encoder", "predictor"], pixels)
