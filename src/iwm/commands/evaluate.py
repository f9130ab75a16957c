"""``iwm eval {knn,mrr} RUN``: the encoder's kNN top-1 (raw pixels beside it) and the world model's
MRR; each prints its result and writes it as JSON into the run directory."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from ..api import RUN_HELP, results_dir
from ..config import Config, ConfigError, validate
from ..files import write_text
from .options import add_device, add_no_progress, add_overrides, load_run


def _knn(args: argparse.Namespace) -> int:
    from ..eval import knn_eval

    run = load_run(args, args.device)
    cfg = run.config
    # the raw pixels through the same protocol beside: the score the encoder has to beat
    res = knn_eval(run.target_encoder, cfg, args.device, progress=not args.no_progress, pixels=not args.no_pixels)
    res["image_size"] = cfg.data.image_size
    print(json.dumps(res, indent=2))
    out = Path(args.out) if args.out else results_dir(run) / "knn.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(res, indent=2))
    print(f"wrote {out}", file=sys.stderr)  # stdout holds the JSON alone
    return 0


def _mrr(args: argparse.Namespace) -> int:
    from ..eval.mrr import MRR_FILES, compute_mrr, format_table, strength_aug

    run = load_run(args, args.device)
    _check_strength(run.config, args.strength)
    try:
        res = compute_mrr(run, num_images=args.images, bank_size=args.bank, seed=args.seed, device=args.device,
                          progress=not args.no_progress, aug=strength_aug(run, args.strength), source=args.source,
                          families=args.family, context="shared" if args.shared_context else "leak-free")
    except ValueError as err:  # bad counts: a message, not a traceback
        print(f"iwm: error: {err}", file=sys.stderr)
        return 2
    print(format_table(res))
    default = MRR_FILES[args.source].replace(".json", "_shared.json" if args.shared_context else ".json")
    out = Path(args.out) if args.out else results_dir(run) / default
    write_text(out, json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


def _check_strength(cfg: Config, strength: float | None) -> None:
    """--strength under the rules pretraining applies to aug.strength (NaN, -1 and 5 are refused):
    the MRR code takes the value as given."""
    if strength is None:
        return
    at = copy.deepcopy(cfg)
    at.aug.strength = strength
    try:
        validate(at)
    except ConfigError as err:
        raise ConfigError(f"--strength {strength:g}: {err}") from None


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``iwm eval`` and its protocols."""
    from ..eval.mrr import SOURCES

    esub = subparsers.add_parser("eval", help="evaluate a run").add_subparsers(dest="protocol", required=True)
    k = esub.add_parser("knn", help="kNN top-1 of the target encoder, and of the raw pixels beside it")
    k.add_argument("run", help=RUN_HELP)
    add_device(k, "cpu")
    k.add_argument("--image-size", type=int, default=None,
                   help="images at this size instead of the pretraining one (the sin-cos positions are rebuilt; "
                        "default: the pretraining size)")
    k.add_argument("--out", default=None, help="JSON file to write the result into (default <run_dir>/knn.json)")
    k.add_argument("--no-pixels", action="store_true", help="skip the raw-pixel reference (pixels_top1)")
    add_no_progress(k)
    add_overrides(k, "the run's config for this evaluation, e.g. eval.knn_k=10 data.path=...")
    k.set_defaults(fn=_knn)

    p = esub.add_parser("mrr", help="mean reciprocal rank of the world model (paper's MRR)")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("--images", type=int, default=64, help="test images (default 64)")
    p.add_argument("--bank", type=int, default=256, help="augmented targets per image (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the protocol's draws")
    add_device(p, "cpu")
    p.add_argument("--strength", type=float, default=None,
                   help="rank against the run's aug config at this strength (e.g. 1 for an I-JEPA run; "
                        "default: the run's own)")
    p.add_argument("--family", action="append", default=None,
                   help="score this family alone (repeatable; default every family the protocol applies to)")
    p.add_argument("--source", choices=SOURCES, default="clean",
                   help="clean: the untouched image is the source (the paper's MRR, default); augmented: the "
                        "source is transformed as in training, scored per family (shows whether grayscale, blur "
                        "and solarisation are undone)")
    p.add_argument("--shared-context", action="store_true",
                   help="geometric families: the earlier protocol, every entry's targets at the blocks' own "
                        "positions in y, whose pixels a moved entry can find in the context (LEAKS; default: each "
                        "entry's targets are the y patches whose pixels all come from the hole in the context)")
    add_no_progress(p)
    p.add_argument("--out", default=None, help="JSON file to write the result into (default <run_dir>/mrr.json, "
                                               "or mrr_augmented.json; _shared before .json with --shared-context)")
    add_overrides(p, "the run's config for this evaluation, e.g. data.path=...")
    p.set_defaults(fn=_mrr)
