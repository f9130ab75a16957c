"""The action-families study: does a world model of geometric transformations, learnt beside
the paper's photometric one, change what the world model and the representation learn?

Pretrainings on CIFAR-10, the same but for ``aug.families``, where the mask tokens sit and the predictor:

- ``photometric``: the paper's families (jitter, grayscale, blur, solarize): the world-model
  study's ``strong_d4`` run (feature conditioning, strength 1, a 4-block predictor), so a runs
  directory shared with that study trains it once;
- ``photometric + geometric``: the same plus crop, hflip, rot90 and rotate (the target view
  moved; ``iwm.actions.geometric``), each mask token placed where its pixels come from in x
  (``predictor.query_frame=source``, the default);
- the same with the mask tokens at their own positions in y (``query_frame=target``), so that
  the predictor must learn the move's geometry from a_x->y alone;
- both geometric runs again with the strongest predictor a CPU affords (sequence conditioning,
  8 blocks), measured by MRR only: does a learned move take a stronger predictor?

With ``long_steps``, the first three are trained for longer as well.

Each is measured by MRR per family (the clean source, the paper's protocol, for every family
that transforms the target, each with its own bank; the augmented source for those that
transform the source), with the leak-free context, each geometric figure beside its floor: the
same predictor, images, banks and masks with a_x->y zeroed and its queries placed by the bank's
geometry (:mod:`iwm.eval.mrr`). The photometric run, and the shipped ``cifar10_equi``, which
never saw a move, get that floor on the geometric banks too. A geometric family is read as
learned only where the learned MRR beats its floor by more than two standard errors. Each run
is also measured on its frozen target encoder by kNN, a linear probe, an attentive
probe and predictor finetuning (:func:`iwm.studies.leverage.evaluate`), beside random init
(the same architecture before its first step) and the raw pixels. The gap between predictor
finetuning and the linear probe places a model on the paper's abstraction spectrum: a rich,
equivariant representation gains from the predictor, an abstract one is served by a linear
probe already.

Every finished measurement is stored in ``runs_dir/action_families.json`` with what decided
it, and reused by the next call, so the study resumes where it stopped. The page states no
conclusion: a placeholder is left for whoever reads the numbers.

    iwm study action-families --steps 800 --out docs/results/action_families.md
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from ..actions import DEFAULT_FAMILIES, GEOMETRIC
from ..config import encoder_dims
from ..downstream.probes import PIXELS
from ..eval.mrr import chance_mrr, compute_mrr, eval_images
from ..files import write_text
from ..train import resolve_device
from ..version import code_version
from .grid import GridRun, device_name, ensure_trained, run_config, settings_digest
from .leverage import CLASSIFICATION, LABELS, PIXEL_KINDS, _pct, _write, default_settings, evaluate, setting_key
from .page import RAW_NUMBERS, VERDICT, describe_data, provenance, table
from .reference import random_init
from .world_model import GRID, fmt_mrr

PHOTOMETRIC_RUN = next(r for r in GRID if r.name == "strong_d4")
_WITH_GEOMETRIC = (*PHOTOMETRIC_RUN.overrides, f"aug.families=[{','.join((*DEFAULT_FAMILIES, *GEOMETRIC))}]")
# the mask tokens at the position in x their pixels come from (the default), and at their own in y
GEOMETRIC_RUN = GridRun("strong_d4_geometric_source", PHOTOMETRIC_RUN.config, _WITH_GEOMETRIC, ("action_families",))
Y_FRAME_RUN = GridRun("strong_d4_geometric", PHOTOMETRIC_RUN.config,
                      (*_WITH_GEOMETRIC, "predictor.query_frame=target"), ("action_families",))
GEOMETRIC_LABEL, Y_FRAME_LABEL = "photometric + geometric", "photometric + geometric, queries in y's frame"
MODELS = {"photometric": PHOTOMETRIC_RUN, GEOMETRIC_LABEL: GEOMETRIC_RUN, Y_FRAME_LABEL: Y_FRAME_RUN}
# what a learned move might take: the strongest predictor a CPU affords (twice as deep, a_x->y as
# tokens of its own, the conditioning that ranked highest in the world-model study), in each
# frame; measured by MRR only, the question they answer
STRONGER_OVERRIDES = ("predictor.conditioning=sequence", "predictor.depth=8")
STRONGER_SUFFIX = "sequence conditioning, 8-block predictor"
STRONGER = {f"{label}, {STRONGER_SUFFIX}": GridRun(f"{r.name}_seq_d8", r.config, (*r.overrides, *STRONGER_OVERRIDES),
                                                   r.tables)
            for label, r in ((GEOMETRIC_LABEL, GEOMETRIC_RUN), (Y_FRAME_LABEL, Y_FRAME_RUN))}
RANDOM = "random init"
RANDOM_KINDS = ("knn", "linear", "attentive")  # predictor finetuning of a random predictor: not measured (time)
SHIPPED = "shipped cifar10_equi (never saw a move)"
STORE = "action_families.json"
# 2: a family's own bank holds each transformation once; 3: the strict context too; 4: the
# leak-free masks, banks without repeats, the floor (stored figures of an earlier protocol are
# measured again)
MRR_PROTOCOL = 4
SCORES = ("mrr", "mrr_se", "floor", "floor_se", "gain", "gain_se", "chance", "count")


def _scores(r: dict) -> dict:
    return {k: r[k] for k in SCORES}


def _mrr(run, mrr_images: int, mrr_bank: int, device: torch.device, moves) -> dict:
    """MRR per family by both protocols (``clean``: every target family's bank, then each
    family's own; ``augmented``: ``all`` and each family that transforms the source), the
    geometric ones beside their floors; a run that never learnt a move gets the floor of the
    geometric families' own banks of ``moves`` (the geometric run's AugConfig) as well."""
    images = eval_images(run, mrr_images, 0)
    out = {}
    for source in ("clean", "augmented"):
        r = compute_mrr(run, images=images, bank_size=mrr_bank, seed=0, device=device, source=source)
        out[source] = {**_scores(r), "families": {f: _scores(v) for f, v in r["families"].items()}}
    if not run.actions.geometric:
        out["geometric_floor"] = _geometric_floor(run, images, mrr_bank, device, moves)
    out["chance"] = chance_mrr(mrr_bank)
    return out


def _aug_digest(aug) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(aug), sort_keys=True).encode()).hexdigest()[:12]


def _geometric_floor(run, images: torch.Tensor, mrr_bank: int, device: torch.device, moves) -> dict:
    """The floor of a model that never learnt a move, on each geometric family's own bank."""
    r = compute_mrr(run, images=images, bank_size=mrr_bank, seed=0, device=device, aug=moves, families=GEOMETRIC)
    return {f: _scores(v) for f, v in r["families"].items()}


def run_study(out_md: Path, runs_dir: Path, steps: int, mrr_images: int, mrr_bank: int, extra_overrides: list[str],
              device: str = "auto", command: str | None = None, settings: dict[str, Any] | None = None,
              progress: bool = True, pixels_from: Path | None = None, long_steps: int | None = None) -> dict:
    """Train (or reuse) both runs, measure them, random init and the raw pixels; write
    ``runs_dir/action_families.json``, ``out_md`` and its .json beside it. Returns the study.
    ``pixels_from``: a leverage study's JSON whose raw-pixel rows are taken where they were
    measured with the same settings (the pixels' linear probe takes an hour on a CPU).
    ``long_steps``: every run also trained for that many steps, and measured alike (does the
    geometric world model come with more training, and what does it give at equal budget?)."""
    from ..api import load

    settings = settings or default_settings()
    out_md, runs_dir = Path(out_md), Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    code = code_version()
    store = runs_dir / STORE
    previous = json.loads(store.read_text())["models"] if store.is_file() else {}
    if pixels_from is not None and PIXELS not in previous:
        stored = json.loads(Path(pixels_from).read_text())["models"].get(PIXELS)
        if stored:
            previous[PIXELS] = {"evals": {k: {**v, "from": str(pixels_from)} for k, v in stored["evals"].items()}}
    study: dict[str, Any] = {"device": device_name(dev), "command": command, "code": code, "models": {},
                             "settings": {**settings, "steps": steps, "mrr_images": mrr_images, "mrr_bank": mrr_bank,
                                          "extra_overrides": list(extra_overrides)}}

    def measured(label: str, kind: str, key: dict, measure: Callable[[], dict]) -> dict:
        done = previous.get(label, {}).get("evals", {}).get(kind)
        if done is not None and done["key"] == key:
            result = done
        else:
            result = {"key": key, "device": device_name(dev), **measure()}
        study["models"].setdefault(label, {"evals": {}})["evals"][kind] = result
        _write(store, study, previous)  # a finished measurement survives a stop
        return result

    models = [(label, grid_run, steps) for label, grid_run in MODELS.items()]
    stronger = [(label, grid_run, steps) for label, grid_run in STRONGER.items()]
    long = longer(long_steps, steps) if long_steps else []
    # the photometric run's longer training last: it is the one to lose if the study is stopped
    models += long[:-1] + stronger + long[-1:]
    moves = run_config(GEOMETRIC_RUN, runs_dir, steps, extra_overrides, device).aug
    # random init (the photometric run's architecture before its first step) and the pixels first:
    # the page is then written after every model, so a study stopped midway leaves a page of what it measured
    base = run_config(PHOTOMETRIC_RUN, runs_dir, steps, extra_overrides, device)
    rand = random_init(base, dev)
    for kind in RANDOM_KINDS:
        key = {**setting_key(kind, settings, 0), "settings": settings_digest(rand, kind)}
        measured(RANDOM, kind, key, lambda: evaluate(rand, kind, settings, dev, progress))
    for kind in PIXEL_KINDS:
        measured(PIXELS, kind, setting_key(kind, settings, 0), lambda: evaluate(rand, kind, settings, dev, progress, True))
    dim, depth, heads = encoder_dims(base.model)
    study["data"] = describe_data(base.data.dataset, base.data.path)
    study["settings"].update(dataset=base.data.dataset, image_size=base.data.image_size,
                             patch_size=base.model.patch_size, batch_size=base.data.batch_size,
                             encoder={"embed_dim": dim, "depth": depth, "num_heads": heads})
    study["order"] = []
    for label, grid_run, n in models:
        cfg = run_config(grid_run, runs_dir, n, extra_overrides, device)
        ensure_trained(cfg, n)
        run = load(cfg.run.out_dir, device=dev)
        study["models"].setdefault(label, {"evals": {}}).update(run=grid_run.name, step=run.step,
                                                                families=list(run.actions.names))
        digest = settings_digest(run, "mrr")
        measured(label, "mrr", {"mrr_images": mrr_images, "mrr_bank": mrr_bank, "step": run.step, "settings": digest,
                                "protocol": MRR_PROTOCOL},
                 lambda: _mrr(run, mrr_images, mrr_bank, dev, moves))
        for kind in (() if label in STRONGER else CLASSIFICATION):
            key = {**setting_key(kind, settings, run.step), "settings": settings_digest(run, kind)}
            measured(label, kind, key, lambda: evaluate(run, kind, settings, dev, progress))
        if SHIPPED not in study["models"]:  # the shipped photometric model, on the same images
            shipped = load("pretrained:cifar10_equi", device=dev)
            measured(SHIPPED, "geometric_floor", {"mrr_images": mrr_images, "mrr_bank": mrr_bank,
                                                  "protocol": MRR_PROTOCOL, "step": shipped.step,
                                                  "moves": _aug_digest(moves)},
                     lambda: _geometric_floor(shipped, eval_images(run, mrr_images, 0), mrr_bank, dev, moves))
        study["order"].append(label)
        _publish(study, store, out_md, previous)
    return study


def _publish(study: dict, store: Path, out_md: Path, previous: dict) -> None:
    """The store (with what ``previous`` holds of models not reached yet), the page and its JSON,
    as measured so far."""
    study["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    _write(store, study, previous)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    _write(out_md.with_suffix(".json"), study, {})
    write_text(out_md, render_markdown(study))


def longer(long_steps: int, steps: int) -> list[tuple[str, GridRun, int]]:
    """(label, run, steps) of every run trained for ``long_steps``, the geometric ones first (the
    photometric run's longer training changes with no geometric measure: it is the one to lose
    if a study is stopped)."""
    times = f"x{long_steps // steps}" if long_steps % steps == 0 else f"{long_steps}steps"
    order = sorted(MODELS.items(), key=lambda item: item[1] is PHOTOMETRIC_RUN)
    return [(f"{label}, {long_steps} steps", GridRun(f"{r.name}_{times}", r.config, r.overrides, r.tables), long_steps)
            for label, r in order]


# ----------------------------------------------------------------------------------------------
# the page


def reading(r: dict) -> str:
    """The rule every geometric row is read by: beyond (or below) the floor where the paired
    gap is more than two standard errors over images from zero, else not resolved."""
    if r.get("mrr") is None:
        return "floor only" if r.get("floor") is not None else "n/a"
    if r.get("gain_se") is None:  # one image scored: no error to read the gap by
        return "not resolved"
    if r["gain"] > 2 * r["gain_se"]:
        return "**beyond its floor**"
    if r["gain"] < -2 * r["gain_se"]:
        return "below its floor"
    return "not resolved"


def _se(v: float | None, se: float | None, signed: bool = False) -> str:
    if v is None:
        return "—"
    text = f"{v:+.4f}" if signed else f"{v:.4f}"
    return text if se is None else f"{text} ± {se:.4f}"


def _floor_table(study: dict) -> list[str]:
    """Every geometric bank of every model: learned, floor, their gap, chance, and the reading."""
    order = [k for k in study.get("order", MODELS) if k in study["models"]]
    rows = []
    for label in [*order, SHIPPED]:
        ev = study["models"].get(label, {}).get("evals", {})
        mrr = ev.get("mrr", {})
        fam = mrr.get("clean", {}).get("families", {}) if mrr else {}
        floors = mrr.get("geometric_floor") or ev.get("geometric_floor") or {}
        for f in GEOMETRIC:
            r = fam.get(f) or floors.get(f)
            if r is None:
                continue
            rows.append([label, f, _se(r["mrr"], r["mrr_se"]), _se(r["floor"], r["floor_se"]),
                         _se(r["gain"], r["gain_se"], signed=True), fmt_mrr(r["chance"]), reading(r)])
    s = study["settings"]
    return ["## The geometric world model against its floor", "",
            f"MRR by the paper's protocol (the clean image as the source), each geometric family's own bank (each "
            f"move once, drawn as in training, up to {s['mrr_bank']} entries), leak-free context: each entry's "
            "targets are the y patches whose pixels all come from the hole in the context, so no context patch "
            "gives any weight to a target pixel, and the context is the same for every entry. **Floor**: the same "
            "predictor, images, banks and masks, a_x->y zeroed and each query placed where the bank's geometry "
            "brings its pixels from: what the geometry we give by hand scores with nothing of the move learnt. "
            "Models that never learnt a move (the photometric run; the shipped `cifar10_equi`) have the floor "
            "alone. ± one standard error over the test images (the paired gap's for learned - floor); one "
            "training seed each, so the errors hold the images' noise, not the seeds'. Reading: beyond (below) "
            "its floor where learned - floor is more than two standard errors above (below) zero; otherwise "
            "not resolved.", "",
            *table(["model", "bank", "learned MRR", "floor", "learned - floor", "chance", "reading"], rows), "",
            *_summary(rows), ""]


def _summary(rows: list[list[str]]) -> list[str]:
    """The table's readings, gathered per model: which families were learnt beyond the floor."""
    out = []
    for label in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == label and r[-1] != "floor only"]
        if not mine:
            continue
        beyond = [r[1] for r in mine if "beyond" in r[-1]]
        below = [r[1] for r in mine if r[-1] == "below its floor"]
        unresolved = [r[1] for r in mine if r[-1] == "not resolved"]
        out.append(f"- {label}: beyond its floor: {', '.join(beyond) or 'none'}; not resolved: "
                   f"{', '.join(unresolved) or 'none'}; below its floor: {', '.join(below) or 'none'}.")
    return out


def _mrr_tables(study: dict) -> list[str]:
    models = {k: study["models"][k] for k in study.get("order", MODELS)}
    moved = [k for k, m in models.items() if any(f in GEOMETRIC for f in m["evals"]["mrr"]["clean"]["families"])]
    aug_families = list(dict.fromkeys(f for m in models.values() for f in m["evals"]["mrr"]["augmented"]["families"]))

    def clean_row(label: str, m: dict) -> list[str]:
        r = m["evals"]["mrr"]["clean"]
        jitter = r["families"].get("jitter", r)
        return [label, _se(r["mrr"], r["mrr_se"]), fmt_mrr(r["chance"]), _se(jitter["mrr"], jitter["mrr_se"]),
                fmt_mrr(jitter["chance"])]

    def aug_row(label: str, m: dict) -> list[str]:
        r = m["evals"]["mrr"]["augmented"]
        return [label, *(fmt_mrr(r["families"][f]["mrr"]) if f in r["families"] else "n/a" for f in aug_families)]

    return [
        *_floor_table(study),
        "## MRR of the banks that keep pixels still", "",
        "The same protocol. `every target family` draws the bank from every family that transforms the target "
        "together: the jitter forced on, the geometric families on and off as in training, each entry once"
        + (f" (for {', '.join(moved)} it mixes moves, so its floor is in the table above only per family)" if moved
           else "") + "; `jitter` is the jitter's own bank. A bank that moves no pixel has chance as its floor: the "
        "zeroed predictor makes one prediction for every entry.", "",
        *table(["model", "every target family", "chance", "jitter", "chance"],
               [clean_row(k, m) for k, m in models.items()]), "",
        "The source transformed as in training, per family that transforms it (the view of the paper's "
        "Figure 1), against the bank above (chance as there):", "",
        *table(["model", *aug_families], [aug_row(k, m) for k, m in models.items()]), ""]


def _protocol_table(study: dict) -> list[str]:
    models = study["models"]
    pretrained = study.get("order", list(MODELS))
    order = [*pretrained, RANDOM, PIXELS]

    def cell(label: str, kind: str) -> str:
        ev = models.get(label, {}).get("evals", {}).get(kind)
        return "not measured" if ev is None else _pct(ev)

    rows = [[label, *(cell(label, k) for k in CLASSIFICATION)] for label in order
            if label in models and label not in STRONGER]
    gap = []
    for label in pretrained:
        ev = models[label]["evals"]
        if "predictor_ft" in ev and "linear" in ev:
            gap.append([label, f"{100 * (ev['predictor_ft']['top1'] - ev['linear']['top1']):+.2f}"])
    return ["## What the representation learnt", "",
            "CIFAR-10 top-1 (%) of the frozen target encoder by each protocol:", "",
            *table(["model", *(LABELS[k] for k in CLASSIFICATION)], rows), "",
            "The abstraction spectrum (the paper's Table 8 reading): predictor finetuning minus the linear probe, "
            "in points. The larger it is, the more the representation is of the rich, equivariant kind that needs "
            "the predictor to be used; near or below zero, of the abstract kind a linear probe reads.", "",
            *table(["model", "predictor FT - linear probe"], gap), ""]


def render_markdown(study: dict) -> str:
    s = study["settings"]
    enc = s["encoder"]
    header = [
        "# World models of geometric actions: what they teach (CIFAR-10)", "",
        *provenance(study),
        f"- pretraining: {s['steps']} steps, batch {s['batch_size']}, {s['dataset']} at {s['image_size']} px, "
        f"patch {s['patch_size']}; encoder ViT width {enc['embed_dim']}, depth {enc['depth']}, {enc['num_heads']} "
        f"heads; `cifar10_equi` with feature conditioning, strength 1, a 4-block predictor "
        f"(`{PHOTOMETRIC_RUN.name}`), and the same with `aug.families` extended by "
        f"{', '.join(GEOMETRIC)} (`{GEOMETRIC_RUN.name}`; default probabilities and ranges of `AugConfig`), its "
        f"mask tokens placed where their pixels come from in x (`predictor.query_frame=source`, the default), "
        f"and once more with them at their own positions in y (`{Y_FRAME_RUN.name}`, "
        f"`predictor.query_frame=target`: the predictor must learn the move's geometry from a_x->y)"
        + "".join(f"; `{label}` is `{label.rsplit(', ', 1)[0]}` trained for longer"
                  for label in study.get("order", []) if label not in MODELS and label not in STRONGER)
        + (f"; a label ending in `{STRONGER_SUFFIX}` is the run it starts with, trained with "
           f"`{' '.join(STRONGER_OVERRIDES)}` and measured by MRR only"
           if any(label in STRONGER for label in study.get("order", [])) else ""),
        f"- MRR: {s['mrr_images']} test images x {s['mrr_bank']} bank entries, seed 0",
        f"- classification: {s['train_size']:,} train images (seeded subset), the whole test split; kNN k=20, "
        f"linear probe, attentive probe {s['attentive_epochs']} epochs, predictor finetuning "
        f"{s['finetune_epochs']} epochs (as `iwm study leverage`); random init is the photometric run's "
        f"architecture before its first step (its predictor finetuning not measured, for time)"
        + "".join(f"; the raw pixels' rows are those of `{src}`, measured with the same settings"
                  for src in sorted({e["from"] for e in study["models"].get(PIXELS, {}).get("evals", {}).values()
                                     if "from" in e})),
        RAW_NUMBERS, ""]
    return "\n".join([*header, *_mrr_tables(study), *_protocol_table(study), VERDICT, ""])
