"""The world-model study of the paper's Tables 1 and 2, measured on CIFAR-10 (or any data the
overrides name): which conditioning lets the predictor learn a world model, and how the
strength of the transformations and the depth of the predictor change it.

Every run of :data:`GRID` is pretrained (or found already trained in ``runs_dir/<name>``),
then measured: MRR of its world model by the paper's protocol (the clean image is the source)
and with the source transformed as in training (family ``all`` and per family), each with the
chance (the floor of a bank that moves no pixel), and kNN top-1 of its target encoder, beside the raw pixels' kNN top-1 by the same
protocol (the reference a representation must beat). The numbers go to ``runs_dir/study.json`` and
to a markdown page with the tables, the paper's qualitative claims beside them, and a plot.
The page states no conclusion: a placeholder per table is left for whoever reads the numbers.

    iwm study world-model --steps 800 --out docs/results/world_model.md
    iwm study world-model --epochs 40 --mrr-bank 256 --section "GPU run" data.on_device=true  # scripts/gpu_study.sh
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..config import Config, encoder_dims
from ..eval.knn import knn_eval
from ..eval.mrr import FAMILIES, compute_mrr, strength_aug
from ..eval.pixels import RawPixels
from ..files import write_text
from ..viz.study_plots import mrr_by_depth
from ..train import resolve_device
from ..version import code_version
from .page import RAW_NUMBERS, VERDICT, as_section, describe_data, provenance, table, write_page
from .grid import GridRun, device_name, ensure_trained, run_config, steps_per_epoch

STRENGTHS = {"weak": 0.5, "strong": 1.0}
DEPTHS = (1, 2, 4)
CONDITIONINGS = ("none", "sequence", "feature")


def _equi(conditioning: str, strength: float, depth: int) -> tuple[str, ...]:
    return (f"predictor.conditioning={conditioning}", f"aug.strength={strength}", f"predictor.depth={depth}")


def _grid() -> list[GridRun]:
    runs = [GridRun(f"cond_{c}", "cifar10_equi", _equi(c, STRENGTHS["strong"], max(DEPTHS)), ("table1",))
            for c in CONDITIONINGS if c != "feature"]
    for label, s in STRENGTHS.items():
        for d in DEPTHS:
            tables = ("table2",)
            if label == "strong" and d == max(DEPTHS):  # the Table 1 feature run: trained once
                tables = ("table1", "table2")
            runs.append(GridRun(f"{label}_d{d}", "cifar10_equi", _equi("feature", s, d), tables))
    runs.append(GridRun("ijepa", "cifar10_ijepa", (), ("reference",)))
    return runs


GRID: list[GridRun] = _grid()


def _setting(run: GridRun, key: str) -> str:
    for o in run.overrides:
        k, _, v = o.partition("=")
        if k == key:
            return v
    raise KeyError(f"{run.name} sets no {key}")


def table1_rows() -> list[tuple[str, GridRun]]:
    """(conditioning, run) in the order none, sequence, feature."""
    rows = {_setting(r, "predictor.conditioning"): r for r in GRID if "table1" in r.tables}
    return [(c, rows[c]) for c in CONDITIONINGS]


def table2_cells() -> dict[tuple[str, int], GridRun]:
    """(strength label, predictor depth) -> run."""
    label = {str(v): k for k, v in STRENGTHS.items()}
    return {(label[_setting(r, "aug.strength")], int(_setting(r, "predictor.depth"))): r
            for r in GRID if "table2" in r.tables}


def measure(run: GridRun, cfg: Config, mrr_images: int, mrr_bank: int, device: torch.device) -> dict:
    """MRR (clean source; augmented source per family) and kNN top-1 of the trained run in
    cfg.run.out_dir."""
    from ..api import load

    loaded = load(cfg.run.out_dir, device=device)
    # I-JEPA trains with the identity: rank against the strong transformations instead
    aug = strength_aug(loaded, STRENGTHS["strong"]) if "reference" in run.tables else None

    def mrr(source: str, bank_aug=aug) -> dict:
        return compute_mrr(loaded, num_images=mrr_images, bank_size=mrr_bank, seed=0, device=device,
                           aug=bank_aug, source=source, families=FAMILIES if source == "augmented" else None)

    clean, augmented = mrr("clean"), mrr("augmented")
    # a bank of weak transformations is harder to tell apart than a bank of strong ones, so MRR on
    # a run's own transformations mixes the world model with the measure: every run is also
    # ranked against the same strong transformations
    common = {"clean": clean["mrr"], "augmented": augmented["mrr"]}
    if aug is None and cfg.aug.strength != STRENGTHS["strong"]:
        common = {source: mrr(source, strength_aug(loaded, STRENGTHS["strong"]))["mrr"] for source in common}
    knn = knn_eval(loaded.target_encoder, cfg, device)
    return {"mrr": clean["mrr"], "mrr_strong_bank": common["clean"], "mrr_augmented": augmented["mrr"],
            "mrr_augmented_strong_bank": common["augmented"],
            "families": augmented["families"], "chance": clean["chance"], "mrr_note": clean["note"],
            "mrr_settings": {k: clean["settings"][k] for k in ("num_images", "bank_size", "seed", "aug")},
            "knn_top1": knn["top1"], "knn": {k: v for k, v in knn.items() if k != "top1"}, "step": loaded.step}


def only_file(names: list[str]) -> str:
    return f"study_only-{'+'.join(names)}.json"


def run_only(names: list[str], runs_dir: Path, steps: int, mrr_images: int, mrr_bank: int,
             extra_overrides: list[str], device: str, command: str) -> dict:
    """Train (or reuse) and measure some runs of :data:`GRID` only (to re-measure a row), into
    ``runs_dir/study_only-<names>.json``; the page, which needs every run, is left alone."""
    known = {r.name: r for r in GRID}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown run(s) {', '.join(unknown)}; the grid has {', '.join(known)}")
    dev = resolve_device(device)
    out = {"device": device_name(dev), "code": code_version(), "command": command,
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "settings": {"steps": steps, "mrr_images": mrr_images, "mrr_bank": mrr_bank}, "runs": {}}
    for name in names:
        run = known[name]
        cfg = run_config(run, runs_dir, steps, extra_overrides, device)
        ensure_trained(cfg, steps)
        out["runs"][name] = {"overrides": list(run.overrides), **measure(run, cfg, mrr_images, mrr_bank, dev)}
        write_text(Path(runs_dir) / only_file(names), json.dumps(out, indent=2))
    return out


def run_study(out_md: Path, runs_dir: Path, steps: int | None, mrr_images: int, mrr_bank: int,
              extra_overrides: list[str], device: str = "auto", command: str | None = None,
              epochs: int | None = None, section: str | None = None) -> dict:
    """Train (or reuse) and measure every run of :data:`GRID` for ``steps`` optimizer steps, or
    ``epochs`` epochs of the training data; write ``runs_dir/study.json``, ``out_md`` and
    ``<out_md stem>_mrr.png`` beside it. ``section``: the page as a section of that title, to sit
    beside another run's page (a GPU run beside the CPU one). Returns the study dict."""
    out_md, runs_dir = Path(out_md), Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    code = code_version()  # before the hours of training, during which the checkout may change
    if (steps is None) == (epochs is None):
        raise ValueError("give the study steps or epochs, one of the two")
    if epochs is not None:
        steps = epochs * steps_per_epoch(run_config(GRID[0], runs_dir, 1, extra_overrides, device))
    results = {}
    for run in GRID:
        cfg = run_config(run, runs_dir, steps, extra_overrides, device)
        trained_now = ensure_trained(cfg, steps)
        results[run.name] = {"config": run.config, "overrides": list(run.overrides), "tables": list(run.tables),
                             "trained_now": trained_now, **measure(run, cfg, mrr_images, mrr_bank, dev)}
    first = run_config(GRID[0], runs_dir, steps, extra_overrides, device)
    dim, depth, heads = encoder_dims(first.model)
    pixels = knn_eval(RawPixels.of(first), first, dev)["top1"]  # every run shares the data and image size
    study = {
        "device": device_name(dev),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "data": describe_data(first.data.dataset, first.data.path),
        "code": code,
        "command": command or shlex.join([Path(sys.executable).name, *sys.argv]),
        "settings": {"steps": steps, "epochs": epochs, "batch_size": first.data.batch_size,
                     "dataset": first.data.dataset,
                     "image_size": first.data.image_size, "patch_size": first.model.patch_size,
                     "encoder": {"embed_dim": dim, "depth": depth, "num_heads": heads},
                     "predictor": {"width": first.predictor.width, "num_heads": first.predictor.num_heads},
                     "mrr_images": mrr_images, "mrr_bank": mrr_bank, "knn_k": first.eval.knn_k,
                     "knn_train": first.eval.knn_train, "knn_test": first.eval.knn_test,
                     "extra_overrides": list(extra_overrides)},
        "knn_pixels_top1": pixels,
        "runs": results,
    }
    write_text(runs_dir / "study.json", json.dumps(study, indent=2))
    plot = out_md.with_name(f"{out_md.stem}_mrr.png")
    plot_mrr(study, plot)
    write_page(out_md, study, render_markdown(study, plot.name, section))
    return study


# ----------------------------------------------------------------------------------------------
# the page


def fmt_mrr(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def fmt_pair(r: dict, key: str) -> str:
    """The clean source's MRR with the augmented source's in brackets (where measured)."""
    other = r.get(key.replace("mrr", "mrr_augmented", 1))
    return fmt_mrr(r.get(key)) + ("" if other is None else f" ({fmt_mrr(other)})")


def fmt_pct(v: float) -> str:
    return f"{100 * v:.2f} %"


TABLE1_PAPER = {
    "none": "MRR ≈ 0: without a_x→y the predictor cannot apply the transformation",
    "sequence": "a good world model",
    "feature": "a good world model; the one used in practice (better downstream)",
}


def _training(s: dict) -> str:
    n = s.get("epochs")
    epochs = f" ({n} epoch{'s' if n != 1 else ''})" if n else ""
    return f"{s['steps']} steps{epochs}"


def _header(study: dict) -> list[str]:
    s, runs = study["settings"], study["runs"]
    enc, pred = s["encoder"], s["predictor"]
    first = next(iter(runs.values()))
    pixels = study.get("knn_pixels_top1")
    return [
        "# World-model study (paper's Tables 1 and 2)", "", *provenance(study),
        f"- training: {_training(s)}, batch {s['batch_size']}, {s['dataset']} at {s['image_size']} px, "
        f"patch {s['patch_size']}",
        f"- encoder: ViT width {enc['embed_dim']}, depth {enc['depth']}, {enc['num_heads']} heads; predictor width "
        f"{pred['width']}, {pred['num_heads']} heads (depth per run below)",
        f"- MRR: {s['mrr_images']} test images x {s['mrr_bank']} bank entries, seed 0; chance (random ranks) "
        f"{fmt_mrr(first['chance'])}; by the paper's protocol, the clean image as the source, and in brackets or "
        "columns of their own with the source transformed as in training (`--source augmented`, this page's "
        "protocol before 2026-12), on the same images, banks and masks",
        f"- kNN: k={s['knn_k']}, bank {first['knn']['bank']} train images, {first['knn']['test']} test images, "
        "target encoder" + ("" if pixels is None else f"; raw pixels by the same protocol: {fmt_pct(pixels)}"),
        f"- extra overrides: {' '.join(s['extra_overrides']) or 'none'}", RAW_NUMBERS, ""]


def _table1(study: dict) -> list[str]:
    runs, pixels = study["runs"], study.get("knn_pixels_top1")
    rows = [[cond, run.name, fmt_mrr(runs[run.name]["mrr"]), fmt_mrr(runs[run.name]["chance"]),
             fmt_mrr(runs[run.name].get("mrr_augmented")), fmt_pct(runs[run.name]["knn_top1"]), TABLE1_PAPER[cond]]
            for cond, run in table1_rows()]
    if pixels is not None:
        rows.append(["raw pixels", "(no encoder)", "", "", "", fmt_pct(pixels), "the floor for kNN"])
    return ["## Table 1: conditioning of the predictor", "",
            f"Strong transformations (aug.strength=1.0), predictor depth 4; MRR on a "
            f"{study['settings']['mrr_bank']}-entry bank by both protocols.", "",
            *table(["conditioning", "run", "MRR, clean source", "chance (the floor: no bank entry moves pixels)",
                    "MRR, augmented source (all)", "kNN top-1", "paper (qualitative)"], rows), "",
            "Paper: without conditioning there is no world model (MRR ≈ 0); sequence and feature conditioning "
            "both learn one; feature conditioning is used in practice.", "", VERDICT, ""]


def _depth_table(study: dict, cell) -> list[str]:
    """strength x predictor depth, one cell per run of Table 2."""
    cells = table2_cells()
    return table(["strength", *(f"depth {d}" for d in DEPTHS)],
                 [[f"{label} ({value})", *(cell(study["runs"][cells[(label, d)].name]) for d in DEPTHS)]
                  for label, value in STRENGTHS.items()])


def _table2(study: dict, plot: str) -> list[str]:
    bank = f"{study['settings']['mrr_bank']}-entry bank"
    lines = ["## Table 2: strength of the transformations x predictor depth", "",
             f"MRR on a {bank}, clean source (augmented source, family all, in brackets), feature conditioning, "
             "each run ranked against its own transformations:", "", *_depth_table(study, lambda r: fmt_pair(r, "mrr")),
             "", f"MRR of the same runs by the same protocols (clean source; augmented source in brackets), ranked "
             f"against the strong transformations (strength {STRENGTHS['strong']}), one {bank} for all: a weak bank "
             "holds views that differ less, which makes its ranking harder whatever the world model.",
             "", *_depth_table(study, lambda r: fmt_pair(r, "mrr_strong_bank")), "",
             "kNN top-1 of the same runs:", "", *_depth_table(study, lambda r: fmt_pct(r["knn_top1"]))]
    if study.get("knn_pixels_top1") is not None:
        lines += ["", f"The raw pixels, by the same kNN protocol: {fmt_pct(study['knn_pixels_top1'])}. A "
                  "representation below them has not yet learned more than its input holds."]
    return [*lines, "", "Paper: stronger transformations make a strong (equivariant) world model easier to learn, "
            "and deeper predictors learn strong world models over a wider range of transformations (capacity is "
            "key).", "", f"![MRR vs predictor depth]({plot})", "", VERDICT, ""]


def _references_and_families(study: dict) -> list[str]:
    runs = study["runs"]
    ijepa = [[name, fmt_mrr(r["mrr"]), fmt_mrr(r["chance"]), fmt_mrr(r.get("mrr_augmented")),
              fmt_pct(r["knn_top1"])] for name, r in runs.items() if "reference" in r["tables"]]
    families = [[name, *(fmt_mrr(r["families"][f]["mrr"]) for f in FAMILIES)] for name, r in runs.items()]
    return ["## Reference: I-JEPA", "",
            "Trained with the identity (aug.strength=0, no conditioning); its MRR is ranked against the strong "
            f"transformations (strength 1.0, a {study['settings']['mrr_bank']}-entry bank), since its own bank "
            "would be one image repeated.", "",
            *table(["run", "MRR, clean source", "chance", "MRR, augmented source (all)", "kNN top-1"], ijepa), "",
            "## MRR per transformation family, augmented source", "",
            f"MRR on a {study['settings']['mrr_bank']}-entry bank, augmented source: the source carries the "
            "family's transformation, as in training (the view of the paper's Figure 1): grayscale, blur and "
            "solarisation must be undone as well as the jitter applied.", "",
            *table(["run", *FAMILIES], families), ""]


def render_markdown(study: dict, plot: str = "world_model_mrr.png", section: str | None = None) -> str:
    """The results page; with ``section``, the same one heading level down under ``## section``."""
    lines = [*_header(study), *_table1(study), *_table2(study, plot), *_references_and_families(study)]
    return "\n".join(as_section(lines, section) if section else lines)


def plot_mrr(study: dict, path: Path) -> None:
    """MRR (clean source) vs predictor depth, one line per strength on its own transformations, the weak
    runs again (dotted) on the strong transformations; chance dashed."""
    runs, cells = study["runs"], table2_cells()

    def values(label: str, key: str) -> list[float | None]:
        return [runs[cells[(label, d)].name].get(key) for d in DEPTHS]

    lines = {f"{label} (strength {value})": values(label, "mrr") for label, value in STRENGTHS.items()}
    dotted = {f"{label} (strength {value})": (f"{label}, ranked on strength {STRENGTHS['strong']}",
                                              values(label, "mrr_strong_bank"))
              for label, value in STRENGTHS.items()
              if value != STRENGTHS["strong"] and None not in values(label, "mrr_strong_bank")}
    mrr_by_depth(path, list(DEPTHS), lines, dotted, next(iter(runs.values()))["chance"],
                 f"world model, {_training(study['settings'])}")
