"""``iwm viz retrieval RUN``: the paper's Figure 1 for a run, as a PNG in its run directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..api import RUN_HELP, results_dir
from .options import add_device, add_overrides, load_run


def _retrieval(args: argparse.Namespace) -> int:
    from ..eval.mrr import strength_aug
    from ..viz.retrieval import retrieval_figure

    run = load_run(args, args.device)
    out = Path(args.out) if args.out else results_dir(run) / "retrieval.png"
    try:
        retrieval_figure(run, out, args.images, args.neighbours, args.bank, args.seed, args.device,
                         families=tuple(args.family) if args.family else None, aug=strength_aug(run, args.strength))
    except ValueError as err:  # a family the run does not learn: a message, not a traceback
        print(f"iwm: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``viz`` (with its ``retrieval`` figure) under the top-level sub-commands."""
    v = subparsers.add_parser("viz", help="figures of a run")
    vsub = v.add_subparsers(dest="figure", required=True)
    p = vsub.add_parser("retrieval", help="nearest neighbours of predictions in the bank (paper's Figure 1)")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("--out", default=None, help="PNG file to write the figure into (default <run_dir>/retrieval.png)")
    p.add_argument("--images", type=int, default=4, help="test images (one row per image and family)")
    p.add_argument("--neighbours", type=int, default=4, help="nearest bank entries shown")
    p.add_argument("--bank", type=int, default=64, help="augmented targets per image")
    p.add_argument("--seed", type=int, default=0, help="random seed of the figure's draws")
    add_device(p, "cpu")
    p.add_argument("--family", action="append", default=None,
                   help="a row per image for this family (repeatable; default all and every family the run learns)")
    p.add_argument("--strength", type=float, default=None,
                   help="use the run's aug config at this strength (e.g. 1 for an I-JEPA run; default: the "
                        "run's own)")
    add_overrides(p, "the run's config for this figure, e.g. data.path=...")
    p.set_defaults(fn=_retrieval)
