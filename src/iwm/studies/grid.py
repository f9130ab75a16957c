"""What every study shares: a named run (shipped config + overrides) that is trained once in
``runs_dir/<name>`` and reused by any study that names it, with a check that a reused run was
trained with the same settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import torch

from .. import config as config_mod
from ..actions import ActionSet
from ..checkpoint import LATEST, load_checkpoint
from ..config import SHIPPED, Config, ConfigError
from ..train import pretrain

# settings added after runs were stored, at the value every earlier run had: left out of what
# decides the weights, so that the stored runs and measurements keep their digests (those below at
# today's default: should one of those defaults change, pin its old value here instead)
_ADDED_AT_DEFAULT = {"data": ("eval_path", "shuffle_buffer", "bad_shards", "image_column", "label_column", "split",
                              "eval_split"),
                     "optim": ("target", "regularizer", "reg_weight", "reg_embeddings", "sigreg_directions",
                               "sigreg_points")}
LATER_DEFAULTS = {("predictor", "norm_eps"): 1e-5, **config_mod.STORED_BEFORE,
                  **{(section, key): getattr(getattr(config_mod.Config(), section), key)
                     for section, keys in _ADDED_AT_DEFAULT.items() for key in keys}}


class GridRun(NamedTuple):
    name: str  # directory under runs_dir
    config: str  # shipped config name
    overrides: tuple[str, ...]  # applied after the study's extra overrides
    tables: tuple[str, ...]  # where a study shows it: "table1", "table2", "reference"


def run_config(run: GridRun, runs_dir: Path, steps: int, extra_overrides: list[str], device: str) -> Config:
    """The run's config: shipped config, then the study's extra overrides, then the run's own
    (so that extras cannot undo what a table varies), then steps, directory and device."""
    overrides = [*extra_overrides, *run.overrides, f"optim.max_steps={steps}",
                 f"run.out_dir={Path(runs_dir) / run.name}", f"run.device={device}"]
    return config_mod.load(SHIPPED / f"{run.config}.yaml", overrides)


def training_part(cfg_dict: dict) -> dict:
    """What decides the trained weights: everything but the run and eval sections, though the
    run's seed counts; not where CIFAR-10 is kept (the same data found through $IWM_CIFAR10, the
    cache or a path), nor how contexts are grouped and images loaded for speed
    (``mask.length_groups``: the same loss; ``data.num_workers``: views depend on (seed, epoch,
    index) only)."""
    cfg = config_mod.from_dict(cfg_dict, stored=True)
    full = cfg.to_dict()
    part = {k: v for k, v in full.items() if k not in ("run", "eval")}
    part["seed"] = full["run"]["seed"]
    part["data"].pop("cache_dir")
    part["data"].pop("num_workers")
    part["mask"].pop("length_groups")
    if part["data"]["dataset"] == "cifar10":
        part["data"].pop("path")
    for (section, key), default in LATER_DEFAULTS.items():
        if part[section].get(key) == default:
            part[section].pop(key)
    if not ActionSet.from_config(cfg.aug, cfg.data.image_size).geometric:
        part["predictor"].pop("query_frame", None)  # queries sit where they are when no pixels move
    return part


def settings_digest(run, kind: str) -> str:
    """A short hash of the run's settings that decide what ``kind`` measures of it. A model
    retrained with another config ends at the same step as the old one, and must not inherit
    its scores. At random init (step 0) the optimiser plays no part, nor do the transformations
    except in an MRR bank, so changing those keeps what was measured there."""
    part = training_part(run.config.to_dict())
    if run.step == 0:
        part.pop("optim")
        if not kind.startswith("mrr"):
            part.pop("aug")
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]


def trained_steps(cfg: Config) -> int:
    """Steps of the run already in cfg.run.out_dir (0 if none); refuses a run trained with
    other settings, which reusing would silently mislabel."""
    latest = Path(cfg.run.out_dir) / "checkpoints" / LATEST
    if not latest.is_file():
        return 0
    state = load_checkpoint(latest)
    if training_part(state["config"]) != training_part(cfg.to_dict()):
        raise ConfigError(f"{cfg.run.out_dir} holds a run trained with other settings; use another --runs-dir "
                          "or remove that run")
    return int(state["step"])


def ensure_trained(cfg: Config, steps: int) -> bool:
    """Train the run of ``cfg`` to ``steps`` unless it is there already (a run stopped half-way
    resumes). Returns whether any training happened now."""
    done = trained_steps(cfg)
    if done > steps:
        raise ConfigError(f"{cfg.run.out_dir} was trained for {done} steps, more than --steps {steps}; use "
                          "another --runs-dir")
    if done == steps:
        return False
    pretrain(cfg)
    return True


def steps_per_epoch(cfg: Config) -> int:
    """Optimizer steps in one epoch of the run's training data (one process)."""
    from ..data import build_dataset

    n = len(build_dataset(cfg.data, cfg.run.seed, "train"))
    if 0 < cfg.data.subset < n:
        n = cfg.data.subset
    return n // cfg.data.batch_size


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"CPU, {torch.get_num_threads()} threads"
    return str(device)
