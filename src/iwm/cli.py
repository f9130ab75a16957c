"""``iwm`` command line: the parser and its entry point, with pretrain, demo, weights out (export, ship) and
in (import-ijepa); the eval, viz, leverage and study groups are in :mod:`iwm.commands`.

Exit status: 0 done, 2 a usage error (bad config, missing or damaged checkpoint, run directory
busy or not writable), 3 non-finite training, 4 no space left on device, 75 stopped by SIGTERM,
SIGINT or SIGUSR1 (checkpointed if training had begun: run the same command to resume)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path

from . import config as config_mod
from . import launch, sharing
from .api import RUN_HELP, hub_repo
from .checkpoint import CheckpointError, intact_note
from .commands import data, evaluate, figures, leverage, studies
from .commands.options import Parser, add_no_progress, add_overrides
from .config import ConfigError, parse_override, resolve_config
from .files import DISK_FULL_EXIT_CODE, DiskFullError, is_disk_full
from .train import PREEMPTED_EXIT_CODE, Preempted
from .version import __version__

log = logging.getLogger(__name__)


def _pretrain_config(args: argparse.Namespace) -> tuple[config_mod.Config, str]:
    """--config; else the run's own config when run.out_dir holds a run (it resumes); else the
    config of the weights it starts from (run.out_dir holding shared weights, or run.init_from),
    for its architecture; else the defaults. Overrides go on top. Returns the config and where it
    came from, in words."""
    cfg_path = resolve_config(args.config)
    if cfg_path is not None:
        return config_mod.load(cfg_path, args.overrides), str(cfg_path)
    given = dict(o.split("=", 1) for o in args.overrides if "=" in o)
    out, init = given.get("run.out_dir"), given.get("run.init_from")
    if out and (Path(out) / "config.yaml").is_file():
        stored = Path(out) / "config.yaml"
        return config_mod.load(stored, args.overrides, stored=True), f"the run's own {stored}"
    source = out if out and sharing.is_folder(out) else init
    if not source:
        return config_mod.load(None, args.overrides), "the built-in defaults (no --config; iwm/config.py)"
    from .api import read_config

    base = read_config(source).to_dict()
    base["run"].pop("out_dir", None)  # the source's own directory is not where this run goes
    base["run"].pop("init_from", None)
    return config_mod.from_dict(base, args.overrides), f"the config of {source}"


def _pretrain(args: argparse.Namespace) -> int:
    from .train import NonFiniteError, StopSignals, pretrain

    # a scheduler may preempt while the run starts up (config, data decoding, the step-0 health
    # check): from here on a stop signal ends it as one in the loop does (main says so, status 75)
    with StopSignals() as stops:
        cfg, origin = _pretrain_config(args)
        # said before anything is built: a run without --config must not pass for a chosen one
        log.info("iwm pretrain: config from %s; run folder %s", origin, cfg.run.out_dir)
        _setup_distributed(cfg)
        finished = False
        try:
            result = pretrain(cfg, stops)
            finished = True
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
        finally:
            _leave_distributed(finished)
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


def _leave_distributed(finished: bool) -> None:
    """Close the process group, if any. After a finished run the processes first wait for each
    other, so that none exits while another still writes or plots. A gloo group left to the
    interpreter's exit can abort the process (its worker threads still hold tensors while Python
    shuts down; pytorch/pytorch#179291): the likely cause of an intermittent SIGABRT in CI."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    command = " ".join(["iwm demo", *(["--steps", str(args.steps)] if args.steps else []),
                        *(["--seeds", str(args.seeds)] if args.seeds != 1 else []),
                        *(["--page", args.page] if args.page else []), *args.overrides])
    run_demo(data=args.data, out_dir=args.out, steps=args.steps, overrides=args.overrides,
             page=Path(args.page) if args.page else None, readme=Path(args.readme) if args.readme else None,
             command=command, seeds=args.seeds)
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from .api import load

    if args.out.endswith((".safetensors", ".pt")):
        raise ConfigError(f"iwm export writes a folder (weights, config.json, model card): give a folder name, "
                          f"not {args.out!r}")
    run = load(args.run)
    folder = run.save_pretrained(args.out, dtype=torch.float16 if args.fp16 else None)
    print(f"wrote {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    print(f"iwm:   run = iwm.from_pretrained({str(folder)!r})   (or any iwm command: iwm eval knn {folder})")
    print("timm:  import timm")
    print(f"       model = {sharing.timm_call(run.config, folder / sharing.weight_file('target_encoder'))}")
    return 0


def _ship(args: argparse.Namespace) -> int:
    from .api import load
    from .registry import registry_root, ship

    entry = ship(load(args.run), args.name, args.registry)
    root = registry_root(args.registry)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in entry["scores"].items()) or "none recorded"
    print(f"shipped {args.name} into {root / entry['folder']} (step {entry['step']}, scores: {scores}); "
          f"manifest {root / 'manifest.json'}")
    print(f"load it with iwm.pretrained({args.name!r}) or pretrained:{args.name} on the command line")
    return 0


def _import_ijepa(args: argparse.Namespace) -> int:
    from .ijepa import import_ijepa

    folder = import_ijepa(args.checkpoint, args.out, args.num_heads, args.predictor_heads)
    print(f"wrote {folder} (licence CC BY-NC 4.0, as the I-JEPA weights); use it as a run: iwm eval knn {folder}; "
          f"continue training as an IWM: iwm pretrain run.out_dir={folder} predictor.conditioning=feature "
          "aug.strength=1 data.path=...")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="iwm", description="Image World Models: pretrain, measure, reuse.")
    ap.add_argument("--version", action="version", version=f"iwm {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain an IWM (resumes when run.out_dir holds a run)",
                       description="Pretrain an IWM into the run folder run.out_dir (checkpoints, metrics, "
                                   "config.yaml); a folder that holds a run is resumed.")
    p.add_argument("--config", help=f"YAML file or shipped config name ({', '.join(config_mod.shipped_configs())}); "
                                    f"default: the built-in defaults, run folder {config_mod.RunConfig().out_dir}")
    add_no_progress(p)
    add_overrides(p, "e.g. optim.lr=5e-4 data.batch_size=64 run.out_dir=runs/mine")
    p.set_defaults(fn=_pretrain)

    p = sub.add_parser("demo", help="pretrain on CIFAR-10 on the CPU and compare kNN with a random encoder")
    p.add_argument("--data", default=None,
                   help="CIFAR-10: cifar-10-python.tar.gz, its extracted folder, a torchvision root or a class-folder "
                        "tree (default: $IWM_CIFAR10, else ~/.cache/iwm, else downloaded there, about 170 MB)")
    p.add_argument("--out", default="runs/demo", help="run folder the demo trains into (checkpoints, metrics)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the demo's CPU budget)")
    p.add_argument("--seeds", type=int, default=1,
                   help="train this many runs, on seeds 0 .. N-1, each in OUT/seed-N (default 1: one run in OUT)")
    p.add_argument("--page", default=None, help="also write the report as a results page, a markdown file "
                                                "(e.g. docs/results/demo.md; default: none)")
    p.add_argument("--readme", default="README.md",
                   help="with --page: a README whose quote of the page's table is refreshed, where it has one")
    add_no_progress(p)
    add_overrides(p, "e.g. optim.lr=5e-4")
    p.set_defaults(fn=_demo)

    evaluate.add_cli(sub)

    p = sub.add_parser("export", help="write a run as shared weights: safetensors per network, config.json, "
                                      "model card (loads in iwm, timm, the Hugging Face Hub)")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("out", help="folder to write the shared weights into")
    p.add_argument("--fp16", action="store_true", help="store the weights in float16 (half the size)")
    p.set_defaults(fn=_export)

    p = sub.add_parser("ship", help="add a run to the models shipped with the package (pretrained:NAME)")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("name", help="model name, e.g. cifar10_equi")
    p.add_argument("--registry", default=None, help="registry folder (default: the package's iwm/weights, or "
                                                   "$IWM_WEIGHTS_DIR)")
    p.set_defaults(fn=_ship)

    p = sub.add_parser("import-ijepa", help="an I-JEPA checkpoint -> a folder every iwm command takes")
    p.add_argument("checkpoint", help="a .pth.tar of the I-JEPA code (encoder, predictor, target_encoder)")
    p.add_argument("--out", required=True, help="folder to write the shared weights into (a run argument)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="encoder attention heads (default: from I-JEPA's model sizes)")
    p.add_argument("--predictor-heads", type=int, default=None, help="default: the encoder's, as I-JEPA")
    p.set_defaults(fn=_import_ijepa)
    figures.add_cli(sub)
    leverage.add_cli(sub)
    data.add_cli(sub)
    studies.add_cli(sub)
    return ap


def _is_override(word: str) -> bool:
    return "=" in word and not word.startswith("-")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, with the dotted ``key=value`` overrides taken wherever they stand.
    argparse fills a command's ``overrides`` list only with the words right after its other
    positionals, so those after a flag (``iwm eval knn RUN --no-pixels eval.knn_train=500``) would
    be "unrecognized"; they join the list here, in command-line order."""
    args, extra = parser.parse_known_args(argv)
    if isinstance(getattr(args, "overrides", None), list):
        args.overrides = [*args.overrides, *(w for w in extra if _is_override(w))]
        extra = [w for w in extra if not _is_override(w)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _progress_both_ways(args)
    return args


def _progress_both_ways(args: argparse.Namespace) -> None:
    """``--no-progress`` and ``run.progress=false`` say the same on every command that has both:
    the flag silences the trainings a command starts, the override the bars it draws itself."""
    overrides = getattr(args, "overrides", None)
    if not hasattr(args, "no_progress") or not isinstance(overrides, list):
        return
    said = []
    for o in overrides:
        if o.split("=", 1)[0].strip() == "run.progress":
            try:
                said.append(parse_override(o)[1])
            except ConfigError:
                pass  # loading the config says what is wrong with it, in one line
    if args.no_progress:
        overrides.append("run.progress=false")
    elif said and said[-1] is False:
        args.no_progress = True


def _from_hub(words: list[str]) -> bool:
    """Whether a run argument, or an override's value (run.init_from=hf:...), names a Hub repository."""
    return any(hub_repo(str(w).split("=", 1)[-1]) is not None for w in words)


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if not _from_hub(words):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the hub unless a run comes from it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(build_parser(), argv)
    status = _command(args)
    launch.report(status)  # under python -m iwm.launch, which passes it on where torchrun would not
    return status


def _command(args: argparse.Namespace) -> int:
    """Run the command; an error users can act on becomes one line and its exit status."""
    try:
        return args.fn(args)
    except Preempted as stop:  # pretrain, and the commands that pretrain (demo, studies)
        print(f"iwm: {stop}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except (ConfigError, FileNotFoundError, sharing.WeightsError, CheckpointError) as err:
        print(f"iwm: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:  # a path built from a long run.out_dir or --out
            print(f"iwm: error: a name in this path is longer than the filesystem allows: {err.filename}",
                  file=sys.stderr)
            return 2
        if not is_disk_full(err):
            raise
        print(f"iwm: error: {err}", file=sys.stderr)
        return DISK_FULL_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
