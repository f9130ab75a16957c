"""``iwm`` command line: pretrain, demo, knn evaluation, weight export.

Exit status: 0 done, 2 a usage error (bad config, missing or damaged checkpoint, run directory
busy or not writable), 3 non-finite training, 4 no space left on device, 75 preempted."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import config as config_mod
from . import studies
from . import viz
from .downstream import cli as downstream_cli
from .checkpoint import CheckpointError, intact_note
from .config import ConfigError
from .eval import mrr as eval_mrr
from .files import DISK_FULL_EXIT_CODE, DiskFullError, is_disk_full

SHIPPED = Path(__file__).parent / "configs"


def resolve_config(name: str | None) -> Path | None:
    """A YAML path, or the name of a shipped config (``cifar10_equi``)."""
    if name is None:
        return None
    p = Path(name)
    if p.is_file():
        return p
    shipped = SHIPPED / f"{name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(q.stem for q in SHIPPED.glob("*.yaml")))
    raise ConfigError(f"--config: no file {name!r} and no shipped config of that name (shipped: {names})")


def _pretrain(args: argparse.Namespace) -> int:
    from .train import PREEMPTED_EXIT_CODE, NonFiniteError, Preempted, pretrain

    cfg_path = resolve_config(args.config)
    run_dir_cfg = None
    if cfg_path is None and args.overrides:
        # `iwm pretrain run.out_dir=runs/x` on an existing run resumes it with its own config
        for o in args.overrides:
            if o.startswith("run.out_dir="):
                cand = Path(o.split("=", 1)[1]) / "config.yaml"
                run_dir_cfg = cand if cand.is_file() else None
    cfg = config_mod.load(cfg_path or run_dir_cfg, args.overrides)
    _setup_distributed(cfg)
    try:
        result = pretrain(cfg)
    except Preempted as stop:
        print(f"iwm: {stop}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except NonFiniteError as err:
        print(f"iwm: error: {err}", file=sys.stderr)
        return 3
    except OSError as err:  # a full disk, whatever the write (metrics, plot): say which checkpoint is intact
        if not is_disk_full(err):
            raise
        said = isinstance(err, DiskFullError) and err.safe
        note = "" if said else f"; {intact_note(Path(cfg.run.out_dir) / 'checkpoints')}"
        print(f"iwm: error: {err}{note}", file=sys.stderr)
        return DISK_FULL_EXIT_CODE
    print(f"done: {result.steps} steps, final loss {result.final_loss:.4f}, run in {result.run_dir}")
    return 0


def _setup_distributed(cfg) -> None:
    """Under torchrun (WORLD_SIZE > 1), join the process group PyTorch's launcher set up."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and cfg.run.device in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(data=args.data, out_dir=args.out, steps=args.steps, overrides=args.overrides)
    return 0


def _knn(args: argparse.Namespace) -> int:
    from .api import load
    from .eval import knn_eval

    run = load(args.run, device=args.device)
    cfg = config_mod.from_dict(run.config.to_dict(), args.overrides)
    res = knn_eval(run.target_encoder, cfg, args.device, progress=True)
    print(json.dumps(res, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .api import load

    load(args.run).export(args.out)
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="iwm", description="Image World Models: pretrain, measure, reuse.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain an IWM (resumes when run.out_dir holds a run)")
    p.add_argument("--config", help="YAML file or shipped config name (cifar10_equi, cifar10_inv, cifar10_ijepa, "
                                    "imagenet_vitb16)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=5e-4 data.batch_size=64")
    p.set_defaults(fn=_pretrain)

    p = sub.add_parser("demo", help="pretrain on CIFAR-10 on the CPU and compare kNN with a random encoder")
    p.add_argument("--data", default=os.environ.get("IWM_CIFAR10", "../shared/data/cifar10-jpg.tar.gz"),
                   help="CIFAR-10 JPEG tarball or extracted folder (default: $IWM_CIFAR10 or ../shared/data/...)")
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the demo's CPU budget)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    p.set_defaults(fn=_demo)

    p = sub.add_parser("eval", help="evaluate a run")
    esub = p.add_subparsers(dest="protocol", required=True)
    k = esub.add_parser("knn", help="kNN top-1 of the target encoder")
    k.add_argument("run", help="run directory or checkpoint")
    k.add_argument("--device", default="cpu")
    k.add_argument("overrides", nargs="*", help="e.g. eval.knn_k=10 data.path=...")
    k.set_defaults(fn=_knn)
    eval_mrr.add_cli(esub)

    p = sub.add_parser("export", help="write a run's weights as safetensors")
    p.add_argument("run")
    p.add_argument("out")
    p.set_defaults(fn=_export)
    viz.add_cli(sub)
    downstream_cli.add_cli(sub)
    studies.add_cli(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the hub: we load no hub weights
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, CheckpointError) as err:
        print(f"iwm: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if not is_disk_full(err):
            raise
        print(f"iwm: error: {err}", file=sys.stderr)
        return DISK_FULL_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
