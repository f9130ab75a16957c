"""``iwm leverage {probe,finetune,multitask,segment} RUN_OR_CHECKPOINT [options]``.

Each command prints a table and writes its JSON result into the run directory (the folder
holding config.yaml), as ``leverage_<command>.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..api import RUN_HELP, results_dir
from ..downstream.segdata import DEFAULT_SEG_DATA
from ..downstream.report import format_table, write_json
from .options import add_device, add_no_progress, add_overrides, load_run


def _load(args: argparse.Namespace):
    from ..train import resolve_device

    device = resolve_device(args.device)
    return load_run(args, device), device


def _classification_sets(run, args: argparse.Namespace, augment: bool):
    from ..downstream.data import eval_set, train_set

    return (train_set(run, args.data, args.train_size, args.seed, augment=augment),
            eval_set(run, args.data, args.test_size, args.seed))


def _finish(run, args: argparse.Namespace, result: dict[str, Any], table: str) -> int:
    print(table)
    out = Path(args.out) if args.out else results_dir(run) / f"leverage_{args.leverage}.json"
    result["arguments"] = {k: v for k, v in vars(args).items() if k != "fn"}
    print(f"wrote {write_json(result, out)}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from ..downstream.probes import KINDS, run_probes

    run, device = _load(args)
    kinds = _chosen(args.kind, KINDS)
    train, test = _classification_sets(run, args, augment=False)
    rows = run_probes(run, kinds, train, test, encoder=args.encoder, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=device,
                      num_workers=args.workers, cache_gb=args.cache_gb, progress=not args.no_progress,
                      pixels=not args.no_pixels)
    table = format_table(rows, [("kind", "probe", "s"), ("features", "features", "s"), ("top1", "top-1", ".4f"),
                                ("trainable_params", "trainable params", ",d"), ("seconds", "seconds", ".2f")])
    return _finish(run, args, {"rows": rows}, table)


def _finetune(args: argparse.Namespace) -> int:
    from ..downstream.finetune import PREDICTOR_LR_RATIO, PROTOCOLS, run_protocols

    if not args.predictor_lr_ratio > 0:
        raise ValueError(f"--predictor-lr-ratio must be > 0 (the paper's is {PREDICTOR_LR_RATIO:g}), "
                         f"got {args.predictor_lr_ratio:g}")
    run, device = _load(args)
    protocols = _chosen(args.protocol, PROTOCOLS)
    train, test = _classification_sets(run, args, augment=not args.no_augment)
    rows = run_protocols(run, protocols, train, test, epochs=_pick(args.epochs, 10),
                         batch_size=_pick(args.batch_size, 128), lr=_pick(args.lr, 5e-4),
                         weight_decay=_pick(args.weight_decay, 0.05), encoder=args.encoder, seed=args.seed,
                         device=device, num_workers=args.workers, progress=not args.no_progress,
                         predictor_lr_ratio=args.predictor_lr_ratio)
    table = format_table(rows, [("protocol", "protocol", "s"), ("top1", "top-1", ".4f"),
                                ("trainable_params", "trainable params", ",d"),
                                ("seconds_per_epoch", "s / epoch", ".2f")])
    return _finish(run, args, {"rows": rows}, table)


def _multitask(args: argparse.Namespace) -> int:
    from ..downstream.data import num_classes
    from ..downstream.multitask import compare_multitask, default_tasks, load_tasks, parse_tasks

    run, device = _load(args)
    train, test = _classification_sets(run, args, augment=not args.no_augment)
    source_classes = num_classes(train, test)
    spec = load_tasks(args.tasks) if args.tasks else default_tasks(source_classes, run.config.data.dataset)
    tasks = parse_tasks(spec, source_classes)
    res = compare_multitask(run, tasks, train, test, epochs=_pick(args.epochs, 10),
                            batch_size=_pick(args.batch_size, 128), lr=_pick(args.lr, 5e-4),
                            weight_decay=_pick(args.weight_decay, 0.05), encoder=args.encoder, seed=args.seed,
                            num_workers=args.workers, progress=not args.no_progress)
    table = format_table(res["rows"], [("task", "task", "s"), ("num_classes", "classes", "d"),
                                       ("multi_top1", "multi-task top-1", ".4f"),
                                       ("single_top1", "single-task top-1", ".4f")])
    m, s = res["multi"], res["single_total"]
    table += (f"\nmulti-task: one predictor, {m['trainable_params']:,} trainable params, {m['seconds']:.1f} s; "
              f"single-task: {len(tasks)} predictors, {s['trainable_params']:,} trainable params, {s['seconds']:.1f} s")
    return _finish(run, args, res, table)


def _segment(args: argparse.Namespace) -> int:
    from ..eval.features import subset
    from ..downstream.segmentation import SOURCES, run_segmentation, segmentation_sets

    run, device = _load(args)
    sources = _chosen(args.source, SOURCES)
    train, val = segmentation_sets(run, args.seg_data, args.train_split, args.eval_split, args.seed, args.cache_dir)
    classes = args.num_classes or train.num_classes()
    rows = run_segmentation(run, sources, subset(train, args.train_size, args.seed + 1),
                            subset(val, args.test_size, args.seed + 2), classes, epochs=_pick(args.epochs, 20),
                            batch_size=_pick(args.batch_size, 32), lr=_pick(args.lr, 1e-3),
                            weight_decay=_pick(args.weight_decay, 0.05),
                            kernel_size=args.kernel, encoder=args.encoder, seed=args.seed, device=device,
                            num_workers=args.workers, progress=not args.no_progress)
    table = format_table(rows, [("source", "tokens", "s"), ("miou", "mIoU", ".4f"), ("pixel_acc", "pixel acc", ".4f"),
                                ("trainable_params", "trainable params", ",d"),
                                ("seconds_per_epoch", "s / epoch", ".2f")])
    return _finish(run, args, {"rows": rows}, table)


def _chosen(picked: list[str] | None, every: tuple[str, ...]) -> list[str]:
    """Repeated choices in the order given, each once; none or "all": every one."""
    return list(every) if not picked or "all" in picked else list(dict.fromkeys(picked))


def _pick(value: Any, default: Any) -> Any:
    # an explicit 0 must reach the checks, not fall back to the default
    return default if value is None else value


def _check_counts(args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("train_size", "test_size", "workers"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")


def _guarded(fn):
    def call(args: argparse.Namespace) -> int:
        try:
            _check_counts(args)
            return fn(args)
        except ValueError as err:  # bad option values: a message, not a traceback
            print(f"iwm: error: {err}", file=sys.stderr)
            return 2
    return call


def _common(p: argparse.ArgumentParser, epochs_default: str) -> None:
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {epochs_default})")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: per protocol)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: per protocol)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: per protocol)")
    p.add_argument("--encoder", choices=("target", "context"), default="target",
                   help="the run's EMA target encoder (default) or its context encoder")
    add_device(p, "auto")
    p.add_argument("--image-size", type=int, default=None,
                   help="images at this size instead of the pretraining one (the sin-cos positions are rebuilt; "
                        "default: the pretraining size)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the subsets and of the training")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--train-size", type=int, default=0, help="seeded subset of the train split (0 = all)")
    p.add_argument("--test-size", type=int, default=0, help="seeded subset of the evaluation split (0 = all)")
    add_no_progress(p)
    p.add_argument("--out", default=None, help="JSON file to write the result into "
                                               "(default <run_dir>/leverage_<command>.json)")
    add_overrides(p, "the run's config for this command, e.g. data.path=... aug.strength=0.5")


def _classification_data(p: argparse.ArgumentParser, augment: bool) -> None:
    p.add_argument("--data", default=None,
                   help="the run's classification data at another path (data.path; default: the run's own)")
    if augment:
        p.add_argument("--no-augment", action="store_true", help="no random crop/flip of the training images")


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``leverage`` and its four sub-commands."""
    from ..downstream.finetune import PREDICTOR_LR_RATIO, PROTOCOLS
    from ..downstream.probes import KINDS
    from ..downstream.segmentation import SOURCES

    top = subparsers.add_parser("leverage", help="use a run downstream: probes, finetuning, multi-task tuning, "
                                                 "segmentation")
    sub = top.add_subparsers(dest="leverage", required=True)

    p = sub.add_parser("probe", help="linear / attentive / kNN probes on the frozen encoder")
    _common(p, "100 linear, 20 attentive")
    _classification_data(p, augment=False)
    p.add_argument("--kind", action="append", choices=(*KINDS, "all"), help="repeatable (default: all)")
    p.add_argument("--cache-gb", type=float, default=2.0,
                   help="largest token cache for the attentive probe, GiB (beyond: recompute per batch)")
    p.add_argument("--no-pixels", action="store_true",
                   help="skip the raw-pixel reference (by default each probe also runs on the pixels)")
    p.set_defaults(fn=_guarded(_probe))

    p = sub.add_parser("finetune", help="predictor / encoder / end-to-end / random-predictor finetuning (Table 4)")
    _common(p, "10")
    _classification_data(p, augment=True)
    p.add_argument("--protocol", action="append", choices=(*PROTOCOLS, "all"), help="repeatable (default: all)")
    p.add_argument("--predictor-lr-ratio", type=float, default=PREDICTOR_LR_RATIO,
                   help="the pretrained predictor's lr over --lr, the lr of the random predictor and of every "
                        f"head (default {PREDICTOR_LR_RATIO:g}: the paper's one tenth)")
    p.set_defaults(fn=_guarded(_finetune))

    p = sub.add_parser("multitask", help="multi-task predictor tuning vs single-task tuning (Table 7)")
    _common(p, "10")
    _classification_data(p, augment=True)
    p.add_argument("--tasks", default=None,
                   help="JSON list of {name, labels}; default: CIFAR-10 classes + vehicle vs animal")
    p.set_defaults(fn=_guarded(_multitask))

    p = sub.add_parser("segment", help="segmentation decoder on encoder or predictor tokens (Table 6)")
    _common(p, "20")
    p.add_argument("--seg-data", default=DEFAULT_SEG_DATA,
                   help="ADE20K-layout folder or tarball: images/<split>/ and annotations/<split>/ "
                        "(default: $IWM_CAMVID)")
    p.add_argument("--cache-dir", default=None, help="where a tarball is extracted (default ~/.cache/iwm)")
    p.add_argument("--train-split", default="training", help="sub-folder of images/ and annotations/ trained on")
    p.add_argument("--eval-split", default="validation", help="sub-folder of images/ and annotations/ scored")
    p.add_argument("--num-classes", type=int, default=0, help="0 = from the training labels")
    p.add_argument("--kernel", type=int, default=1, help="decoder conv kernel: 1 (linear per token) or 3")
    p.add_argument("--source", action="append", choices=(*SOURCES, "all"), help="repeatable (default: all)")
    p.set_defaults(fn=_guarded(_segment))
