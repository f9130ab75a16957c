"""What every ``iwm`` command shares on its command line: help texts that show defaults, the
``--device``, ``--no-progress`` and dotted-override arguments, and a run loaded with those overrides."""

from __future__ import annotations

import argparse

from .. import config as config_mod
from ..config import ConfigError

DEVICE_HELP = "auto (a CUDA GPU when present, else the CPU), cpu, cuda, cuda:N or mps"
# a trained run's networks are fixed: an override of their shape would describe other weights
ARCHITECTURE = ("model.", "predictor.")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, less its noise: a help that already says its default keeps
    its own words, and an unset (None, "") or off (False) default adds nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
        if "default" in text or unset:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help shows defaults; ``add_subparsers`` makes its sub-commands
    of the same class, so one ``Parser`` at the top reaches every command."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def add_device(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--device", default=default, help=DEVICE_HELP)


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the same as run.progress=false)")


def add_overrides(p: argparse.ArgumentParser, help_: str) -> None:
    p.add_argument("overrides", nargs="*", help=f"dotted config overrides, key.sub=value: {help_}")


def load_run(args: argparse.Namespace, device):
    """``args.run`` loaded on ``device`` at ``--image-size``, its config with the command's dotted
    overrides on top (data.*, aug.*, eval.*, ...; data.image_size=N works as --image-size N)."""
    from ..api import load

    run = load(args.run, device=device, image_size=args.image_size if "image_size" in args else None)
    overrides = getattr(args, "overrides", None) or []
    fixed = [o for o in overrides if o.strip().startswith(ARCHITECTURE)]
    if fixed:
        raise ConfigError(f"{fixed[0]}: a trained run's architecture cannot be overridden (model.*, predictor.*)")
    cfg = config_mod.from_dict(run.config.to_dict(), overrides)
    run.resize(cfg.data.image_size)  # rebuilds the positions; the rest of cfg is the run's, overridden
    run.config = cfg
    return run
