"""``iwm study {world-model,leverage,recipe,reference,action-families,efficiency}``: each parses its options, runs its study
(:mod:`iwm.studies`), which measures and writes the page, and says where the results went.

A page goes under runs/results/ unless ``--out`` names another file: run from a clone, a study
must not overwrite the shipped pages of docs/results/ (``--out docs/results/<page>.md`` does)."""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from ..config import ConfigError
from ..studies import action_families, efficiency, leverage, recipe, reference, world_model
from .options import add_device, add_no_progress, add_overrides

RESULTS = "runs/results"  # where a study's page goes unless --out says otherwise
PAGE_HELP = "markdown page to write, its JSON (and figure) beside it"


def one_line_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A study's bad option, or a run trained with other settings, as one line and exit 2."""
    @functools.wraps(run)
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (ConfigError, ValueError) as err:
            print(f"iwm: error: {err}", file=sys.stderr)
            return 2
    return guarded


def checked_store(path: Path) -> Path:
    """A study's store of earlier results (its JSON), checked before the study reads it: a file
    that is not a JSON object (cut short, or something else written there) stops the study with
    one line naming it."""
    if not path.is_file():
        return path
    try:
        held = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); move it aside to measure afresh") from None
    if not isinstance(held, dict):
        raise ValueError(f"{path} holds a JSON {type(held).__name__}, not the object a study stores; move it aside "
                         "to measure afresh")
    return path


def _only(args: argparse.Namespace) -> list[str]:
    return [n for n in args.only.split(",") if n]


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``iwm study`` and its studies."""
    p = subparsers.add_parser("study", help="studies that train and measure a grid of runs")
    studies = p.add_subparsers(dest="study", required=True)
    _add_world_model(studies)
    _add_leverage(studies)
    _add_recipe(studies)
    _add_reference(studies)
    _add_action_families(studies)
    _add_efficiency(studies)


# ----------------------------------------------------------------------------------------------
# iwm study world-model


@one_line_errors
def _world_model(args: argparse.Namespace) -> int:
    if args.steps is None and args.epochs is None:
        args.steps = 800
    length = ["--epochs", str(args.epochs)] if args.epochs is not None else ["--steps", str(args.steps)]
    section = ["--section", args.section] if args.section else []
    command = shlex.join(["iwm", "study", "world-model", *length, "--mrr-images", str(args.mrr_images),
                          "--mrr-bank", str(args.mrr_bank), "--runs-dir", args.runs_dir,
                          *(["--only", args.only] if args.only else ["--out", args.out]),
                          "--device", args.device, *section, *args.overrides])
    if args.only:
        if args.steps is None:
            raise ValueError("--only re-measures runs by --steps")
        world_model.run_only(_only(args), Path(args.runs_dir), args.steps, args.mrr_images, args.mrr_bank,
                             args.overrides, args.device, command)
        print(f"wrote {Path(args.runs_dir) / world_model.only_file(_only(args))}")
        return 0
    world_model.run_study(Path(args.out), Path(args.runs_dir), args.steps, args.mrr_images, args.mrr_bank,
                          args.overrides, args.device, command=command, epochs=args.epochs, section=args.section)
    print(f"wrote {args.out} and {Path(args.runs_dir) / 'study.json'}")
    return 0


def _add_world_model(studies: argparse._SubParsersAction) -> None:
    """Register ``iwm study world-model``."""
    w = studies.add_parser("world-model", help="the paper's Tables 1 and 2: conditioning, strength x predictor depth")
    length = w.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 800)")
    length.add_argument("--epochs", type=int, default=None,
                        help="epochs of the training data per run, instead of --steps (default: by --steps)")
    w.add_argument("--mrr-images", type=int, default=32, help="MRR test images (default 32)")
    w.add_argument("--mrr-bank", type=int, default=64, help="MRR bank size (default 64)")
    w.add_argument("--runs-dir", default="runs/study", help="one directory per run (default runs/study)")
    w.add_argument("--out", default=f"{RESULTS}/world_model.md", help=PAGE_HELP)
    add_device(w, "auto")
    add_no_progress(w)
    w.add_argument("--only", default="", help="comma-separated runs to train and measure into "
                                               "<runs-dir>/study_only-<runs>.json (re-measuring a row; no page; "
                                               "default: every run, and the page)")
    w.add_argument("--section", default=None, help="write the page as a section of this title (e.g. 'GPU run'), "
                                                    "to sit beside another run's page (default: a whole page)")
    add_overrides(w, "for every run, e.g. data.path=...")
    w.set_defaults(fn=_world_model)


# ----------------------------------------------------------------------------------------------
# iwm study leverage


@one_line_errors
def _leverage(args: argparse.Namespace) -> int:
    defaults = leverage.default_settings()
    settings = {k: (defaults[k] if getattr(args, k) is None else getattr(args, k)) for k in defaults}
    for k in ("attentive_epochs", "finetune_epochs", "finetune_batch", "seg_epochs", "seg_batch"):
        if settings[k] < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {settings[k]}")
    for k in ("train_size", "test_size"):
        if settings[k] < 0:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 0, got {settings[k]}")
    if not settings["predictor_lr_ratio"] > 0:
        raise ValueError(f"--predictor-lr-ratio must be > 0 (the paper's is {leverage.PREDICTOR_LR_RATIO:g}), "
                         f"got {settings['predictor_lr_ratio']:g}")
    given = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items() if v != defaults[k]]
    command = shlex.join(["iwm", "study", "leverage", "--steps", str(args.steps), *given,
                          *(["--table4"] if args.table4 else []), *(["--multitask"] if args.multitask else []),
                          "--runs-dir", args.runs_dir,
                          *(["--only", args.only] if args.only else ["--out", args.out]),
                          "--device", args.device, *args.overrides])
    only = _only(args)
    checked_store(Path(args.runs_dir) / "leverage.json")
    leverage.run_study(Path(args.out), Path(args.runs_dir), args.steps, settings, args.overrides, args.device,
                       table4=args.table4, multitask=args.multitask, command=command, progress=not args.no_progress,
                       only=only)
    print(f"wrote {Path(args.runs_dir) / 'leverage.json'}" + ("" if only else f" and {args.out}"))
    return 0


def _add_leverage(studies: argparse._SubParsersAction) -> None:
    """Register ``iwm study leverage``."""
    d = leverage.default_settings()
    p = studies.add_parser("leverage", help="the paper's Table 8: invariant / equivariant IWM and I-JEPA under "
                                            "probes, predictor finetuning and segmentation")
    p.add_argument("--steps", type=int, default=800, help="pretraining steps per run (default 800)")
    for key, help_ in (("train_size", "seeded CIFAR-10 train subset, 0 = all"),
                       ("test_size", "seeded test subset, 0 = all"), ("seed", "evaluation seed"),
                       ("attentive_epochs", "attentive probe epochs"), ("finetune_epochs", "finetuning epochs"),
                       ("finetune_batch", "finetuning batch"), ("finetune_lr", "finetuning peak lr"),
                       ("predictor_lr_ratio", "the pretrained predictor's lr in predictor finetuning, over "
                                              "--finetune-lr (the paper: 0.1)"),
                       ("seg_epochs", "segmentation epochs"), ("seg_batch", "segmentation batch"),
                       ("seg_lr", "segmentation peak lr"), ("seg_data", "ADE20K-layout folder or tarball")):
        p.add_argument(f"--{key.replace('_', '-')}", type=type(d[key]), default=None,
                       help=f"{help_} (default {d[key] or '$IWM_CAMVID' if key == 'seg_data' else d[key]})")
    p.add_argument("--table4", action="store_true",
                   help="also encoder, end-to-end and random-predictor finetuning of IWM-equivariant")
    p.add_argument("--multitask", action="store_true",
                   help="also multi-task vs single-task predictor tuning of IWM-equivariant (Table 7)")
    p.add_argument("--runs-dir", default="runs/study", help="one directory per run, shared with world-model")
    p.add_argument("--out", default=f"{RESULTS}/leverage.md", help=PAGE_HELP)
    p.add_argument("--only", default="", help="comma-separated runs (weak_d1, strong_d4, ijepa) to re-measure into "
                                               "<runs-dir>/leverage.json; no page (default: every run, and the page)")
    add_device(p, "auto")
    add_no_progress(p)
    add_overrides(p, "for every pretraining, e.g. data.path=...")
    p.set_defaults(fn=_leverage)


# ----------------------------------------------------------------------------------------------
# iwm study recipe


@one_line_errors
def _recipe(args: argparse.Namespace) -> int:
    command = shlex.join(["iwm", "study", "recipe", "--steps", str(args.steps), "--val-images", str(args.val_images),
                          "--runs-dir", args.runs_dir, *(["--only", args.only] if args.only else []), *args.overrides])
    # a call without --out is a worker's share of the variants: its choice is not the study's, so
    # it does not read the test split
    study = recipe.run_study(Path(args.out) if args.out else None, Path(args.runs_dir), args.steps, args.mrr_images,
                             args.mrr_bank, args.overrides, args.device, _only(args) or None, command,
                             args.val_images, score_test=bool(args.out))
    print(recipe.chosen_line(study))
    return 0


def _add_recipe(studies: argparse._SubParsersAction) -> None:
    """Register ``iwm study recipe``."""
    r = studies.add_parser("recipe", help="short cifar10_equi runs, one change each: what learns fastest")
    r.add_argument("--steps", type=int, default=500, help="optimizer steps per run (default 500)")
    r.add_argument("--val-images", type=int, default=5000,
                   help="train images held out from the kNN bank as validation queries, which choose the "
                        "variant (default 5000)")
    r.add_argument("--mrr-images", type=int, default=32, help="MRR images, from the validation ones (default 32)")
    r.add_argument("--mrr-bank", type=int, default=256, help="MRR bank size (default 256)")
    r.add_argument("--runs-dir", default="runs/recipe", help="one directory per run (default runs/recipe)")
    r.add_argument("--only", default="", help="comma-separated variants to run (default all)")
    r.add_argument("--out", default="", help="markdown page to write the table into, keeping its other text; "
                                           "only this call scores the test split, for the chosen variant "
                                           "(default: none)")
    add_device(r, "auto")
    add_no_progress(r)
    add_overrides(r, "for every run, e.g. data.path=...")
    r.set_defaults(fn=_recipe)


# ----------------------------------------------------------------------------------------------
# iwm study reference


@one_line_errors
def _reference(args: argparse.Namespace) -> int:
    names = [n for n in args.models.split(",") if n] if args.models else [m.name for m in reference.MODELS]
    unknown = sorted(set(names) - {m.name for m in reference.MODELS})
    if unknown:
        raise ValueError(f"--models: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(m.name for m in reference.MODELS)}")
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    settings = reference.default_reference_settings()
    settings["mrr_images"] = args.mrr_images
    command = " ".join(["iwm study reference", *(["--models", args.models] if args.models else []),
                        *(["--epochs", str(args.epochs)] if args.epochs != reference.DEFAULT_EPOCHS else []),
                        *(["--runs-dir", args.runs_dir] if args.runs_dir != reference.DEFAULT_RUNS_DIR else []),
                        *([] if args.no_page else ["--out", args.out]), *args.overrides])
    checked_store(Path(args.runs_dir) / "reference.json")
    reference.run_study(None if args.no_page else Path(args.out), Path(args.runs_dir), args.epochs, settings, names,
                        train=args.train, random=not args.no_random, device=args.device, command=command,
                        overrides=args.overrides, progress=not args.no_progress, update_shipped=args.update_shipped,
                        readme=Path(args.readme) if args.readme else None)
    print(f"wrote {Path(args.runs_dir) / 'reference.json'}" + ("" if args.no_page else f" and {args.out}"))
    return 0


def _add_reference(studies: argparse._SubParsersAction) -> None:
    """Register ``iwm study reference``."""
    p = studies.add_parser("reference", help="measure the long reference trainings of the shipped CIFAR-10 "
                                             "configs (kNN, probes, finetuning, CamVid, MRR) against pixels and "
                                             "random init")
    p.add_argument("--models", default="", help="comma-separated configs to measure (default: all)")
    p.add_argument("--epochs", type=int, default=reference.DEFAULT_EPOCHS,
                   help=f"training epochs (default {reference.DEFAULT_EPOCHS})")
    p.add_argument("--train", action="store_true", help="train the models not finished yet first, in this process")
    p.add_argument("--runs-dir", default=reference.DEFAULT_RUNS_DIR,
                   help=f"one directory per model (default {reference.DEFAULT_RUNS_DIR})")
    p.add_argument("--out", default=f"{RESULTS}/reference_models.md", help=PAGE_HELP)
    p.add_argument("--no-page", action="store_true", help="measure and store, write no page")
    p.add_argument("--mrr-images", type=int, default=reference.default_reference_settings()["mrr_images"],
                   help="test images ranked for MRR")
    p.add_argument("--no-random", action="store_true", help="skip the random-initialisation references")
    p.add_argument("--update-shipped", action="store_true",
                   help="write the scores of models measured from their shipped weights into the package's "
                        "manifest and model cards")
    p.add_argument("--readme", default="",
                   help="a README whose quote of the page's summary is refreshed, where it has one (e.g. README.md; "
                        "default: none, so that a run in a clone leaves its README alone)")
    add_device(p, "auto")
    add_no_progress(p)
    add_overrides(p, "for every model, e.g. data.path=...")
    p.set_defaults(fn=_reference)


# ----------------------------------------------------------------------------------------------
# iwm study action-families


@one_line_errors
def _action_families(args: argparse.Namespace) -> int:
    settings = leverage.default_settings()
    if args.train_size is not None:
        settings["train_size"] = args.train_size
    command = shlex.join(["iwm", "study", "action-families", "--steps", str(args.steps), "--mrr-images",
                          str(args.mrr_images), "--mrr-bank", str(args.mrr_bank),
                          *([f"--train-size={args.train_size}"] if args.train_size is not None else []),
                          *(["--pixels-from", args.pixels_from] if args.pixels_from else []),
                          *(["--long-steps", str(args.long_steps)] if args.long_steps else []),
                          "--runs-dir", args.runs_dir, "--out", args.out, "--device", args.device, *args.overrides])
    checked_store(Path(args.runs_dir) / action_families.STORE)
    if args.pixels_from:
        checked_store(Path(args.pixels_from))
    action_families.run_study(Path(args.out), Path(args.runs_dir), args.steps, args.mrr_images, args.mrr_bank,
                              args.overrides, args.device, command=command, settings=settings,
                              progress=not args.no_progress,
                              pixels_from=Path(args.pixels_from) if args.pixels_from else None,
                              long_steps=args.long_steps)
    print(f"wrote {args.out} and {Path(args.runs_dir) / action_families.STORE}")
    return 0


def _add_action_families(studies: argparse._SubParsersAction) -> None:
    """Register ``iwm study action-families``."""
    p = studies.add_parser("action-families", help="photometric vs photometric + geometric world models (queries "
                                                   "in x's frame and in y's): MRR per family, probes, predictor "
                                                   "finetuning")
    p.add_argument("--steps", type=int, default=800, help="pretraining steps per run (default 800)")
    p.add_argument("--mrr-images", type=int, default=128, help="MRR test images (default 128)")
    p.add_argument("--mrr-bank", type=int, default=64, help="MRR bank size (default 64)")
    p.add_argument("--train-size", type=int, default=None,
                   help=f"seeded CIFAR-10 train subset of the probes (default {leverage.default_settings()['train_size']})")
    p.add_argument("--long-steps", type=int, default=None,
                   help="also train every run for this many steps, and measure them alike (default: no longer runs)")
    p.add_argument("--pixels-from", default="", help="a leverage study's JSON (docs/results/leverage.json): its "
                                                     "raw-pixel rows are reused where measured with the same settings "
                                                     "(default: none, all measured here)")
    p.add_argument("--runs-dir", default="runs/study", help="one directory per run, shared with world-model")
    p.add_argument("--out", default=f"{RESULTS}/action_families.md", help=PAGE_HELP)
    add_device(p, "auto")
    add_no_progress(p)
    add_overrides(p, "for every pretraining, e.g. data.path=...")
    p.set_defaults(fn=_action_families)


# ----------------------------------------------------------------------------------------------
# iwm study efficiency


@one_line_errors
def _efficiency(args: argparse.Namespace) -> int:
    for name in ("steps", "every", "queries", "seeds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.steps % args.every:
        raise ValueError(f"--every ({args.every}) must divide --steps ({args.steps})")
    command = shlex.join(["iwm", "study", "efficiency", "--steps", str(args.steps), "--every", str(args.every),
                          "--queries", str(args.queries), "--seeds", str(args.seeds), "--finalists",
                          str(args.finalists), "--runs-dir", args.runs_dir, "--out", args.out, "--device",
                          args.device, *args.overrides])
    checked_store(Path(args.runs_dir) / efficiency.STORE)
    efficiency.run_study(Path(args.out), Path(args.runs_dir), args.steps, args.every, args.queries, args.overrides,
                         args.device, command=command, seeds=args.seeds, finalists=args.finalists)
    print(f"wrote {args.out}, its plot and {Path(args.runs_dir) / efficiency.STORE}")
    return 0


def _add_efficiency(studies: argparse._SubParsersAction) -> None:
    """Register ``iwm study efficiency``."""
    p = studies.add_parser("efficiency", help="which recipe learns most per CPU minute: validation kNN against "
                                              "training minutes, beside the raw pixels, and MRR at the end")
    p.add_argument("--steps", type=int, default=800, help="training steps per run (default 800, the demo's)")
    p.add_argument("--every", type=int, default=200, help="steps between the scored checkpoints (default 200)")
    p.add_argument("--queries", type=int, default=2000,
                   help="validation images held out of the train split as kNN queries (default 2000)")
    p.add_argument("--seeds", type=int, default=2, help="seeds the finalists are trained on (default 2)")
    p.add_argument("--finalists", type=int, default=2, help="recipes trained again on other seeds (default 2)")
    p.add_argument("--runs-dir", default="runs/efficiency", help="one directory per run (default runs/efficiency)")
    p.add_argument("--out", default=f"{RESULTS}/efficiency.md", help=PAGE_HELP)
    add_device(p, "auto")
    add_no_progress(p)
    add_overrides(p, "for every run, e.g. data.path=...")
    p.set_defaults(fn=_efficiency)
