"""The reference models: the shipped CIFAR-10 configs (IWM-equivariant with the paper's jitter, with
twice its ranges, with a deeper predictor, and with that predictor and 1.5x the ranges;
IWM-invariant; I-JEPA) trained long with nothing changed but the number of epochs, then measured
by every protocol the project has, each score beside the same protocol on the raw pixels and on the
same network at its random initialisation.

A long training runs on its own, in the background and checkpointed (the page prints the
command); this study measures whatever has finished and writes the page:

    nohup iwm pretrain --config cifar10_equi optim.epochs=24 run.out_dir=runs/reference/cifar10_equi &
    iwm study reference                      # measure the finished runs, write the page
    iwm ship runs/reference/cifar10_equi cifar10_equi

``--train`` trains the missing models first, in this process (a GPU, or a patient CPU).

Measured per model, on its frozen EMA target encoder unless said otherwise:

- kNN top-1 by the README's protocol (:func:`iwm.eval.knn_eval`: a 10,000-image bank, the
  whole test split, k = 20);
- the linear probe, the attentive probe and predictor finetuning, and a segmentation decoder
  on CamVid, with the settings of the leverage study (:mod:`.leverage`), so rows compare;
- MRR of the world model on a 256-entry bank, by the paper's protocol (the clean image is the
  source) and, beside it, with the source transformed as in training (the protocol of our pages
  before 2026-12); an I-JEPA run, which has no transformations of its own, is ranked on the
  strength-1 transformations of the other configs;
- on IWM-equivariant, the paper's Table 4: encoder, end-to-end and random-predictor finetuning
  beside predictor finetuning, with encoder finetuning from random init (training from scratch
  by the same recipe) as the reference;
- learning curves: the training-health records (kNN, MRR, effective rank) against epochs.

Every finished measurement is stored at once in ``<runs-dir>/reference.json`` with what decides
it (the run's step and the settings); a second call reuses it. The scores also go into the run
directory as the files ``iwm eval`` and ``iwm leverage`` write, so that ``iwm ship`` carries them.

A model whose run directory is gone (a fresh clone) but which the package ships at the same step
is measured from its shipped fp16 weights (``pretrained:NAME``), the page saying so; its
learning curves and hours are kept from the stored study.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import config as config_mod
from ..config import SHIPPED, Config, ConfigError
from ..downstream.report import write_json
from ..viz.study_plots import health_by_epoch
from ..train import resolve_device
from ..version import code_version
from .page import code_note, describe_data, refresh_quote, table, write_page
from .grid import device_name, settings_digest, steps_per_epoch, trained_steps, training_part
from .leverage import TABLE4, default_settings, evaluate, setting_key

DEFAULT_EPOCHS = 24  # 9,360 steps: 1.5 to 2.3 hours a model on a 2-core CPU (measured, reference_models.md)
DEFAULT_RUNS_DIR = "runs/reference"
MRR_BANK = 256
TARGETS = {"knn_over_pixels": 0.10, "mrr": 0.10}  # the equivariant model's bar (issue 10)


class Model(NamedTuple):
    name: str  # the shipped config, the run's directory and the shipped model's name
    label: str
    paper: str  # what the paper reports for this kind of model


MODELS = (
    Model("cifar10_equi", "IWM-equivariant", "like MIM: weaker linearly, competitive in attentive probing, best "
                                             "with predictor finetuning and out of domain"),
    Model("cifar10_equi_strong", "IWM-equivariant, strong jitter",
          "Table 2's stronger augmentations: a stronger world model (MRR 0.85 against 0.79 for 18-deep "
          "predictors, 0.81 against 0.09 for 12-deep ones), but a less abstract representation: linear probe "
          "34.3 against 67.5, predictor finetuning 81.7 against 83.3"),
    Model("cifar10_equi_deep", "IWM-equivariant, deeper predictor",
          "Table 2's predictor capacity: at the default augmentations an 18-deep predictor learns an equivariant "
          "world model where a 12-deep one does not (MRR 0.79 against 0.09); IWM^Equi_{18,384} is the "
          "less abstract of the paper's two reference models, weaker linearly and better after predictor "
          "finetuning (83.3 against 81.3)"),
    Model("cifar10_equi_deep_jitter15", "IWM-equivariant, deeper predictor, 1.5x jitter",
          "Table 2 with both levers: with an 18-deep predictor, strong jitter raises MRR from 0.79 to 0.85, "
          "at a cost in abstraction (linear probe 34.3 against 67.5, predictor finetuning 81.7 against 83.3); "
          "here the jitter is only half-way to doubled, to keep the representation"),
    Model("cifar10_inv", "IWM-invariant", "like contrastive methods: clearly better in linear probing than MIM "
                                          "and other JEPAs"),
    Model("cifar10_ijepa", "I-JEPA", "between the two: beaten linearly by IWM-invariant, by IWM-equivariant "
                                     "after predictor finetuning"),
)
# what each model is measured by, in the order of the page (the simplest head first)
KINDS = ("knn", "linear", "attentive", "predictor_ft", "seg_encoder", "mrr", "mrr_augmented")
PIXEL_KINDS = ("knn", "linear", "attentive")  # the protocols a network-free input goes through
# the models the targets of issue 10 are about
EQUIVARIANT = ("cifar10_equi", "cifar10_equi_strong", "cifar10_equi_deep", "cifar10_equi_deep_jitter15")
TABLE4_MODEL = "cifar10_equi"  # the paper compares finetuning protocols on the equivariant IWM
TABLE4_RANDOM = ("encoder",)  # from random init: supervised training from scratch, the same recipe
LABELS = {"knn": "kNN top-1 (README protocol)", "linear": "linear probe", "attentive": "attentive probe",
          "predictor_ft": "predictor finetuning", "seg_encoder": "CamVid mIoU, encoder tokens",
          "mrr": "MRR, {bank}-entry bank, clean source (the paper's protocol)",
          "mrr_augmented": "MRR, {bank}-entry bank, augmented source (our pages before 2026-12)"}
MRR_SOURCES = {"mrr": "clean", "mrr_augmented": "augmented"}


def model_config(name: str, runs_dir: str | Path, epochs: int, device: str = "auto",
                 overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The shipped config ``name`` with ``epochs`` epochs, in ``runs_dir/name``."""
    return config_mod.load(SHIPPED / f"{name}.yaml", [*overrides, f"optim.epochs={epochs}",
                                                      f"run.out_dir={Path(runs_dir) / name}", f"run.device={device}"])


def train_command(name: str, runs_dir: str | Path, epochs: int) -> str:
    return (f"iwm pretrain --config {name} optim.epochs={epochs} "
            f"run.out_dir={shlex.quote(str(Path(runs_dir) / name))}")


SHIPPED_SOURCE = "the shipped fp16 weights, pretrained:{name} (the run directory is gone)"


def shipped_step(name: str) -> int | None:
    """The step of the package's shipped model ``name`` (None if it ships none)."""
    from ..registry import manifest

    entry = manifest()["models"].get(name)
    return None if entry is None else int(entry["step"])


def total_steps(cfg: Config) -> int:
    return cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch(cfg)


def default_reference_settings() -> dict[str, Any]:
    return {**default_settings(), "mrr_images": 128, "mrr_bank": MRR_BANK}


# ----------------------------------------------------------------------------------------------
# measuring one model


def random_init(cfg: Config, device: torch.device):
    """The run's networks as they were before the first step (the same seed rebuilds them)."""
    from ..api import Run
    from ..train import build_model

    model = build_model(cfg)
    nets = (model.encoder, model.target_encoder, model.predictor)
    for m in nets:
        m.to(device).eval().requires_grad_(False)
    return Run(cfg, *nets, 0, Path(cfg.run.out_dir), Path(cfg.run.out_dir))


def measure(run, kind: str, s: dict[str, Any], device: torch.device, progress: bool, pixels: bool = False) -> dict:
    """One measurement of ``run`` (or of the raw pixels at its image size)."""
    if kind == "knn":
        from ..eval import knn_eval
        from ..eval.pixels import RawPixels

        net = RawPixels.of(run.config) if pixels else run.target_encoder
        return knn_eval(net.to(device), run.config, device, progress=progress)
    if kind in MRR_SOURCES:
        from ..eval.mrr import compute_mrr, strength_aug

        # I-JEPA trains without transformations: its bank is the others' (it should score chance)
        strength = 1.0 if run.config.aug.strength == 0 else None
        res = compute_mrr(run, num_images=s["mrr_images"], bank_size=s["mrr_bank"], seed=s["seed"], device=device,
                          progress=progress, aug=strength_aug(run, strength), source=MRR_SOURCES[kind])
        return {**res, "bank_strength": strength or run.config.aug.strength}
    return evaluate(run, kind, s, device, progress, pixels)


def _key(kind: str, s: dict[str, Any], step: int) -> dict[str, Any]:
    """What decides a measurement: a stored one with another key is measured again."""
    if kind == "knn":
        return {"step": step, "protocol": "README"}
    if kind == "mrr":
        return {"step": step, **{k: s[k] for k in ("mrr_images", "mrr_bank", "seed")}, "source": "clean"}
    if kind == "mrr_augmented":  # the key "mrr" had before the clean protocol: those measurements stand
        return {"step": step, **{k: s[k] for k in ("mrr_images", "mrr_bank", "seed")}}
    return setting_key(kind, s, step)


def migrate(measured: dict[str, dict]) -> dict[str, dict]:
    """A stored model's measurements from before the clean-source protocol: its "mrr" was the
    augmented source's, so it moves to "mrr_augmented" (re-keyed, not re-measured)."""
    old = measured.get("mrr")
    if old is not None and "source" not in old.get("key", {}):
        measured = {k: v for k, v in measured.items() if k != "mrr"}
        measured.setdefault("mrr_augmented", {**old, "source": "augmented"})
    return measured


def score(row: dict | None) -> float | None:
    """The headline number of a measurement: top-1, mIoU or MRR."""
    if not row:
        return None
    for k in ("top1", "miou", "mrr"):
        if k in row:
            return row[k]
    return None


def write_score_files(run_dir: Path, trained: dict[str, dict]) -> None:
    """The measurements as the files ``iwm eval`` / ``iwm leverage`` write in a run directory,
    which ``iwm ship`` and ``iwm export`` read the scores from."""
    def rows(*kinds: str) -> dict:
        return {"rows": [trained[k] for k in kinds if k in trained], "source": "iwm study reference"}

    if "knn" in trained:
        write_json(trained["knn"], run_dir / "knn.json")
    if "mrr" in trained:
        write_json(trained["mrr"], run_dir / "mrr.json")
    if "mrr_augmented" in trained:
        write_json(trained["mrr_augmented"], run_dir / "mrr_augmented.json")
    write_json(rows("linear", "attentive"), run_dir / "leverage_probe.json")
    write_json(rows("predictor_ft", *TABLE4), run_dir / "leverage_finetune.json")
    write_json(rows("seg_encoder"), run_dir / "leverage_segment.json")


# ----------------------------------------------------------------------------------------------
# the study


def run_study(out_md: Path | None, runs_dir: Path, epochs: int, settings: dict[str, Any], names: list[str],
              train: bool = False, random: bool = True, device: str = "auto", command: str | None = None,
              overrides: list[str] | tuple[str, ...] = (), progress: bool = True,
              update_shipped: bool = False, readme: Path | None = None) -> dict:
    """Measure the finished reference runs in ``runs_dir`` (training them first with ``train``),
    store ``runs_dir/reference.json`` as it goes, write ``out_md`` with its JSON and figure.
    ``overrides``: dotted config overrides for every model (e.g. ``data.path=...``).
    ``update_shipped``: a model measured from its shipped weights gets its scores rewritten in
    the package (manifest, config.json, model card), as ``iwm ship`` would have written them.
    ``readme``: a README whose quote of the page's summary is refreshed (where it has one)."""
    from ..train import pretrain

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    store = runs_dir / "reference.json"
    previous = json.loads(store.read_text()) if store.is_file() else {}
    study: dict[str, Any] = {"device": device_name(dev), "code": code_version(), "command": command,
                             "settings": {**settings, "epochs": epochs}, "models": {},
                             "pixels": previous.get("pixels", {})}
    made_by = {"code": study["code"], "device": study["device"]}  # stamped on each new measurement
    for model in MODELS:
        cfg = model_config(model.name, runs_dir, epochs, device, overrides)
        study.setdefault("data", describe_data(cfg.data.dataset, cfg.data.path))
        if train and trained_steps(cfg) < total_steps(cfg):
            pretrain(cfg)
        old = previous.get("models", {}).get(model.name, {})
        old = {**old, **{part: migrate(old[part]) for part in ("trained", "random") if part in old}}
        entry = study["models"][model.name] = model_entry(model, cfg, old, runs_dir, epochs)
        if entry["steps"] < entry["total_steps"]:
            continue  # not (yet) finished: listed, not measured
        if model.name not in names:  # not asked for now: what was measured of this very run stays
            entry.update({k: old[k] for k in ("trained", "random") if k in old and old.get("steps") == entry["steps"]})
            continue
        run = load_measured(model, cfg, entry.get("weights"), dev)

        def save() -> None:
            write_json(study, store)

        # filled in place, so that every save() holds what is finished
        entry["trained"] = old.get("trained", {})
        table4 = TABLE4 if model.name == TABLE4_MODEL else ()
        _measure_all(run, entry["trained"], settings, dev, progress, save, made_by, kinds=(*KINDS, *table4))
        Path(cfg.run.out_dir).mkdir(parents=True, exist_ok=True)
        write_score_files(Path(cfg.run.out_dir), entry["trained"])
        if update_shipped and entry.get("weights"):
            from ..registry import update_scores
            from ..sharing import collect_scores

            update_scores(model.name, collect_scores(cfg.run.out_dir))
        # the raw pixels (the same data and image size for every model): measured once
        _measure_all(run, study["pixels"], settings, dev, progress, save, made_by, kinds=PIXEL_KINDS, pixels=True)
        if "random" in old or random:
            entry["random"] = old.get("random", {})
        if random:
            # models of one architecture, data and seed share their random init: what another one
            # measured of it under the same key stands (see settings_digest)
            others = [m.get("random", {}) for n, m in {**previous.get("models", {}), **study["models"]}.items()
                      if n != model.name]
            _measure_all(random_init(cfg, dev), entry["random"], settings, dev, progress, save, made_by,
                         kinds=(*KINDS, *(TABLE4_RANDOM if table4 else ())), reuse=others)
    study["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_json(study, store)
    if out_md is not None:
        write_outputs(study, Path(out_md), readme)
    return study


def model_entry(model: Model, cfg: Config, old: dict, runs_dir: Path, epochs: int) -> dict[str, Any]:
    """A model's place in the study: how far its run is, its curves and hours, and where its
    weights come from (``weights``: the shipped ones, where the run directory is gone)."""
    done, total = trained_steps(cfg), total_steps(cfg)
    records = read_metrics(Path(cfg.run.out_dir))
    entry: dict[str, Any] = {"label": model.label, "config": model.name, "steps": done, "total_steps": total,
                             "train_command": train_command(model.name, runs_dir, epochs),
                             "curves": health_curves(records, steps_per_epoch(cfg)),
                             "train_hours": training_hours(records, cfg.data.batch_size)}
    if not records:  # the run directory is gone: what the study stored of its training stays
        entry.update({k: old[k] for k in ("curves", "train_hours") if k in old})
        if done == 0 and shipped_step(model.name) == total:
            entry.update(steps=total, weights=SHIPPED_SOURCE.format(name=model.name))
    return entry


def load_measured(model: Model, cfg: Config, shipped: str | None, device: torch.device):
    """The run to measure: its run directory, or the shipped weights (``shipped``) standing in for
    it, with its config and directory, after checking they were trained with the same settings."""
    from ..api import load

    if not shipped:
        return load(cfg.run.out_dir, device=device)
    run = load(f"pretrained:{model.name}", device=device)
    if training_part(run.config.to_dict()) != training_part(cfg.to_dict()):
        raise ConfigError(f"pretrained:{model.name} was trained with other settings than the config "
                          f"{model.name} at {cfg.optim.epochs} epochs; train the run (--train) instead")
    run.config, run.out_dir = cfg, Path(cfg.run.out_dir)
    return run


def write_outputs(study: dict, out_md: Path, readme: Path | None = None) -> None:
    """The page with its JSON and figure beside it, and the README's quote of its summary."""
    curves = {m["label"]: m["curves"] for m in study["models"].values()}
    out_md.parent.mkdir(parents=True, exist_ok=True)
    health_by_epoch(out_md.parent / "reference_curves.png", curves)
    write_page(out_md, study, render_markdown(study, "reference_curves.png"))
    if readme is not None:
        quote_in_readme(study, Path(readme))


def _measure_all(run, out: dict[str, dict], s: dict[str, Any], device: torch.device, progress: bool, save,
                 made_by: dict[str, str], kinds: tuple[str, ...] = KINDS, pixels: bool = False,
                 reuse: list[dict[str, dict]] = ()) -> None:
    """Every measurement of ``kinds`` on ``run`` into ``out``, keeping those already there with
    the same key, or taking one with the same key from ``reuse``; each new one carries ``made_by``
    (the code and device that measured it), and ``save()`` follows it, so that a stopped study
    keeps what it finished."""
    for kind in kinds:
        key = _key(kind, s, 0 if pixels else run.step)
        if not pixels:  # the pixels depend on the data alone
            key["settings"] = settings_digest(run, kind)
        if kind in out and out[kind].get("key") == key:
            continue
        same = next((r[kind] for r in reuse if r.get(kind, {}).get("key") == key), None)
        if same is not None:
            out[kind] = same
            save()
            continue
        out[kind] = {"key": key, **made_by, **measure(run, kind, s, device, progress, pixels)}
        out[kind].pop("confusion", None)
        save()


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of the run's metrics.jsonl (none where it has not started)."""
    f = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []


def health_curves(records: list[dict], per_epoch: int) -> list[dict]:
    """The training-health records, with their epoch."""
    keys = ("step", "knn_top1", "knn_top1_pixels", "mrr", "mrr_chance", "effective_rank", "feature_std")
    return [{"epoch": r["step"] / per_epoch, **{k: r.get(k) for k in keys}} for r in records
            if r.get("kind") == "health"]


def training_minutes(records: list[dict], batch_size: int) -> dict[int, float]:
    """Training minutes up to each logged step, from the rates the run logged (health checks and
    the time a stopped run lost before resuming not counted)."""
    out, seconds, last = {}, 0.0, 0
    for r in records:
        if r.get("kind") == "train" and r.get("images_per_s"):
            seconds += max(0, r["step"] - last) * batch_size / r["images_per_s"]
            last = r["step"]
            out[r["step"]] = seconds / 60
    return out


def training_hours(records: list[dict], batch_size: int) -> float | None:
    """Hours a one-process run spent training, from the rates it logged (health checks included;
    the time a stopped run lost before resuming is not)."""
    if not records:
        return None
    minutes = training_minutes(records, batch_size)
    health = sum(r.get("seconds", 0.0) for r in records if r.get("kind") == "health")
    return (max(minutes.values(), default=0.0) * 60 + health) / 3600


# ----------------------------------------------------------------------------------------------
# the page


def _fmt(kind: str, v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.4f}" if kind.startswith("mrr") else f"{100 * v:.2f} %"


def _targets(study: dict) -> list[str]:
    lines, pix = [], score(study["pixels"].get("knn"))
    bar = None if pix is None else pix + TARGETS["knn_over_pixels"]
    for name in EQUIVARIANT:
        t = study["models"].get(name, {}).get("trained", {})
        knn, mrr = score(t.get("knn")), score(t.get("mrr"))
        if knn is None or bar is None or mrr is None:
            lines.append(f"- `{name}` is not measured yet.")
            continue
        lines.append(f"- `{name}`: kNN at least 10 points over the raw pixels ({_fmt('knn', bar)}): "
                     f"{_fmt('knn', knn)} ({100 * (knn - pix):+.2f} points over the pixels), "
                     f"{'met' if knn >= bar else '**not met**'}; MRR (clean source) on a {MRR_BANK}-entry bank "
                     f"at least "
                     f"{TARGETS['mrr']:.2f}: {mrr:.4f} on a {t['mrr']['settings']['bank_size']}-entry bank "
                     f"({mrr / t['mrr']['chance']:.1f}x chance), {'met' if mrr >= TARGETS['mrr'] else '**not met**'}.")
    return lines


NOISE_RULE = ("A gap under 1 point of top-1 or mIoU, or 0.005 of MRR, is read as not resolved (the seed "
              "spread is not measured yet); a larger one is a direction seen on one seed, not a measured effect.")


def verdict(kind: str, a: float, b: float, tie_holds: bool = False) -> str:
    """Whether "a beats b" holds; a difference one seed cannot tell from noise (1 point of top-1
    or mIoU, 0.005 of MRR, until the seed spread is measured) is not resolved, which is enough
    where the claim is "a matches or beats b" (``tie_holds``)."""
    margin = 0.005 if kind.startswith("mrr") else 0.01
    if abs(a - b) < margin:
        within = f"{margin:g}" if kind.startswith("mrr") else f"{100 * margin:g} point"
        return f"{'holds: ' if tie_holds else ''}not resolved (within {within}, one seed)"
    return "holds" if a > b else "does not hold"


def _directions(study: dict) -> list[str]:
    """The paper's directions, checked where both sides are measured."""
    t = {n: m.get("trained", {}) for n, m in study["models"].items()}

    def val(name: str, kind: str) -> float | None:
        return score(t.get(name, {}).get(kind))

    checks = (
        ("IWM-invariant beats IWM-equivariant in linear probing", "cifar10_inv", "cifar10_equi", "linear"),
        ("IWM-invariant beats I-JEPA in linear probing", "cifar10_inv", "cifar10_ijepa", "linear"),
        ("IWM-equivariant beats IWM-invariant after predictor finetuning", "cifar10_equi", "cifar10_inv",
         "predictor_ft"),
        ("IWM-equivariant beats I-JEPA after predictor finetuning", "cifar10_equi", "cifar10_ijepa", "predictor_ft"),
        ("IWM-equivariant beats IWM-invariant out of domain (CamVid)", "cifar10_equi", "cifar10_inv", "seg_encoder"),
        ("IWM-equivariant's world model is stronger (MRR, each ranked on its own transformations, as in the "
         "paper) than IWM-invariant's", "cifar10_equi", "cifar10_inv", "mrr"),
        ("Stronger jitter gives a stronger world model (MRR)", "cifar10_equi_strong", "cifar10_equi", "mrr"),
        ("... and a less abstract representation: the default jitter beats strong jitter in linear probing",
         "cifar10_equi", "cifar10_equi_strong", "linear"),
        ("The default jitter beats strong jitter after predictor finetuning", "cifar10_equi",
         "cifar10_equi_strong", "predictor_ft"),
        ("A deeper predictor gives a stronger world model (MRR)", "cifar10_equi_deep", "cifar10_equi", "mrr"),
        ("... and a less abstract representation: the shallower predictor beats the deeper one in linear probing",
         "cifar10_equi", "cifar10_equi_deep", "linear"),
        ("The deeper predictor is the better one to finetune (predictor finetuning)", "cifar10_equi_deep",
         "cifar10_equi", "predictor_ft"),
        ("With the deeper predictor too, stronger jitter gives a stronger world model (MRR)",
         "cifar10_equi_deep_jitter15", "cifar10_equi_deep", "mrr"),
        ("... and a less abstract representation: the default jitter beats 1.5x jitter in linear probing",
         "cifar10_equi_deep", "cifar10_equi_deep_jitter15", "linear"),
    )
    lines = []
    for claim, a, b, kind in checks:
        va, vb = val(a, kind), val(b, kind)
        if va is None or vb is None:
            missing = " and ".join(n for n, v in ((a, va), (b, vb)) if v is None)
            lines.append(f"| {claim} | not measured yet ({missing}) | |")
            continue
        lines.append(f"| {claim} | {_fmt(kind, va)} vs {_fmt(kind, vb)} | {verdict(kind, va, vb)} |")
    return [f"One seed per model. {NOISE_RULE} MRR rows: the paper's protocol (clean source), a "
            f"{study['settings']['mrr_bank']}-entry bank.", "",
            "| paper's direction | measured | here |", "|---|---|---|", *lines]


def _table4(study: dict) -> list[str]:
    """The paper's Table 4 on the equivariant model: which part to finetune."""
    m = study["models"].get(TABLE4_MODEL, {})
    t, r = m.get("trained", {}), m.get("random", {})
    if not all(k in t for k in ("predictor_ft", *TABLE4)):
        return []
    names = {"predictor_ft": "predictor FT (frozen encoder)", "encoder": "encoder FT", "end2end": "end-to-end FT",
             "random_predictor": "random predictor FT (frozen encoder)"}
    lines = [f"## Table 4 analogue: which part of {m['label']} to finetune", "",
             "The paper: with an equivariant world model, finetuning the predictor on the frozen encoder "
             "matches or beats encoder finetuning at a fraction of the trainable parameters; a predictor "
             "of the same architecture from random init does not. Every protocol has the epochs, batch and "
             "learning rate of predictor finetuning above and the paper's head for its part; the *from random "
             "init* column trains the same network from scratch by the same recipe.", "",
             "| protocol | head | top-1 | from random init | trainable params | s / epoch |",
             "|---|---|---|---|---|---|"]
    for kind, label in names.items():
        row = t[kind]
        scratch = _fmt(kind, score(r.get(kind))) if kind in TABLE4_RANDOM else "—"
        lines.append(f"| {label} | {row['settings']['head']} | **{_fmt(kind, score(row))}** | {scratch} | "
                     f"{row['trainable_params']:,} | {row['seconds_per_epoch']:.1f} |")
    pred, enc, rnd = (score(t[k]) for k in ("predictor_ft", "encoder", "random_predictor"))
    lines += ["", f"- Predictor finetuning matches or beats encoder finetuning: {_fmt('encoder', pred)} vs "
                  f"{_fmt('encoder', enc)}: {verdict('encoder', pred, enc, tie_holds=True)}.",
              f"- The pretrained predictor beats one from random init: {_fmt('encoder', pred)} vs "
              f"{_fmt('encoder', rnd)}: {verdict('encoder', pred, rnd)}."]
    return [*lines, ""]


def _codes(study: dict) -> list[str]:
    """The code versions that made the page's measurements, each once."""
    rows = [*study["pixels"].values(), *(r for m in study["models"].values() for part in ("trained", "random")
                                         for r in m.get(part, {}).values())]
    return list(dict.fromkeys(r["code"] for r in rows if r.get("code"))) or [study["code"]]


def _made_by(study: dict, what: str) -> str:
    """The codes (or devices) that made the page's measurements, each named once."""
    rows = [*study["pixels"].values(), *(r for m in study["models"].values() for part in ("trained", "random")
                                         for r in m.get(part, {}).values())]
    found = list(dict.fromkeys(r[what] for r in rows if r.get(what)))
    unknown = f" (older measurements: {what} not recorded)" if any(not r.get(what) for r in rows) else ""
    return (", ".join(found) or study[what]) + unknown


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


SUMMARY = ("<!-- summary -->", "<!-- end of the summary -->")
# the README quotes the summary between these (refreshed by the study, checked by a test)
README_QUOTE = ("<!-- quoted from docs/results/reference_models.md: summary -->", "<!-- end of the quote -->")
SUMMARY_KINDS = ("knn", "linear", "predictor_ft", "seg_encoder", "mrr", "mrr_augmented")


def summary_table(study: dict) -> str:
    """One row per measured model (and the raw pixels): the headline of each protocol."""
    header = ["model", "kNN", "linear", "predictor FT", "CamVid mIoU", "MRR (paper's protocol)",
              "MRR (augmented source)", "hours"]
    rows = []
    for name, m in study["models"].items():
        if "trained" in m:
            hours = "—" if not m.get("train_hours") else f"{m['train_hours']:.1f}"
            rows.append([f"`{name}`", *(_fmt(k, score(m["trained"].get(k))) for k in SUMMARY_KINDS), hours])
    rows.append(["raw pixels", *(_fmt(k, score(study["pixels"].get(k))) if k in PIXEL_KINDS else "—"
                                 for k in SUMMARY_KINDS), "—"])
    return "\n".join(table(header, rows)) + "\n"


def quote_in_readme(study: dict, readme: Path) -> bool:
    """Refresh the README's quote of the summary, where the README has one; True if it did."""
    return refresh_quote(readme, *README_QUOTE, summary_table(study))


def render_markdown(study: dict, figure: str) -> str:
    from ..eval.mrr import chance_mrr

    s = study["settings"]
    train = "all the" if not s["train_size"] else f"{s['train_size']:,} seeded"
    test = "the whole test split" if not s["test_size"] else f"{s['test_size']:,} seeded test images"
    knn = next((m["trained"]["knn"] for m in study["models"].values() if "trained" in m), None)
    knn_protocol = ("" if knn is None else f": a bank of {knn['bank']:,} train images, {knn['test']:,} test "
                                           f"images, k = {knn['k']}, temperature {knn['temperature']:g}")
    lines = [
        "# Reference models: the shipped CIFAR-10 configs, trained long",
        "",
        "The shipped CIFAR-10 configs with nothing changed but `optim.epochs`, each measured on its "
        "frozen EMA target encoder beside the same protocol on the raw pixels and on the same network at "
        "its random initialisation. The bar is the raw pixels, not the random network.",
        "",
        f"- written {study['date']}; measured by code {_made_by(study, 'code')} on {_made_by(study, 'device')} "
        "(each measurement records its own in the JSON)",
        *([f"- {note[0].upper()}{note[1:]}"] if (note := code_note(_codes(study))) else []),
        f"- data: {study.get('data', 'not recorded')}",
        f"- command: `{study['command']}` (it reuses the stored measurements and makes the missing ones)",
        f"- kNN: the README's protocol (`iwm eval knn`{knn_protocol})",
        f"- linear / attentive probe, predictor finetuning, CamVid: the leverage study's settings "
        f"([leverage.md](leverage.md)): {train} train images, {test}; attentive probe "
        f"{_n(s['attentive_epochs'], 'epoch')}; predictor finetuning {_n(s['finetune_epochs'], 'epoch')} "
        f"(attentive head, the pretrained predictor at {s['predictor_lr_ratio']:g} x lr {s['finetune_lr']:g}); "
        f"CamVid at the pretraining's image size, {_n(s['seg_epochs'], 'epoch')} of a linear decoder on the "
        "encoder's tokens",
        f"- MRR: {s['mrr_images']} test images, each against a bank of {s['mrr_bank']} transformed targets "
        f"(chance {chance_mrr(s['mrr_bank']):.4f}), by the paper's protocol (the clean image is the source) "
        "and, beside it, with the source transformed as in training (the protocol of these pages before "
        "2026-12, `iwm eval mrr --source augmented`); the same images, banks and masks for both. I-JEPA, "
        "trained without transformations, is ranked on the strength-1 ones",
        "- raw numbers: the .json file of the same name beside this page",
        "",
        "## Summary",
        "",
        f"Each model's target encoder by the protocols below, its world model by MRR on a {s['mrr_bank']}-entry "
        "bank by both protocols; the sections after it give each protocol beside random init and the raw pixels.",
        "",
        SUMMARY[0],
        summary_table(study) + SUMMARY[1],
        "",
        "## The models",
        "",
        "| model | config | trained | hours | command |",
        "|---|---|---|---|---|",
    ]
    for name, m in study["models"].items():
        if m["steps"] >= m["total_steps"]:
            state = f"{_n(m['steps'], 'step')} ({_n(s['epochs'], 'epoch')})"
        else:
            state = (f"**not finished**: {m['steps']:,} of {m['total_steps']:,} steps" if m["steps"] else
                     f"**not trained yet** ({m['total_steps']:,} steps)")
        hours = "—" if not m.get("train_hours") else f"{m['train_hours']:.2f}"
        lines.append(f"| {m['label']} | `{name}` | {state} | {hours} | `{m['train_command']}` |")
    shipped = [f"`{n}`" for n, m in study["models"].items() if m.get("weights")]
    if shipped:
        lines += ["", f"Measured from the shipped fp16 weights (`pretrained:NAME`; the run directory was gone, "
                      f"its curves and hours are those the study stored): {', '.join(shipped)}. Measurements "
                      "stored from the run itself were kept; only those missing were made from the weights."]
    lines += ["", "Then `iwm study reference` measures the finished ones and writes this page, and "
                  "`iwm ship runs/reference/NAME NAME` ships one (fp16, with these scores in the manifest).", ""]
    for name, m in study["models"].items():
        if "trained" not in m:
            continue
        paper = next(x.paper for x in MODELS if x.name == name)
        lines += [f"## {m['label']} (`{name}`)", "", f"The paper: {paper}.", "",
                  "| protocol | trained | random init | raw pixels |", "|---|---|---|---|"]
        for kind in KINDS:
            trained, rnd = score(m["trained"].get(kind)), score(m.get("random", {}).get(kind))
            px = score(study["pixels"].get(kind)) if kind in PIXEL_KINDS else None
            lines.append(f"| {LABELS[kind].format(bank=s['mrr_bank'])} | **{_fmt(kind, trained)}** | "
                         f"{_fmt(kind, rnd)} | {_fmt(kind, px)} |")
        lines.append("")
    lines += [*_table4(study), "## Targets (IWM-equivariant)", "",
              "The bars set for the equivariant reference models: kNN 10 points over the raw pixels, and MRR "
              f"{TARGETS['mrr']:.2f} on a {MRR_BANK}-entry bank (set when MRR was read with the augmented source; "
              "read here by the paper's protocol).", "", *_targets(study), "",
              "## Where the paper's directions hold", "", *_directions(study), "",
              "## Learning curves", "",
              "The training-health records, every `eval.every` steps: kNN on a few hundred held-out images "
              "against a smaller bank, MRR on a small bank (the `eval.health_*` settings of the config), so "
              "their values sit below the protocols above; the dashed lines are the raw pixels on the same "
              "images and MRR's chance.", "",
              f"![learning curves]({figure})", ""]
    return "\n".join(lines)
