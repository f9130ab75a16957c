"""The parts of one pretraining run, built from its config, and the step and checkpoint methods
over them; :class:`iwm.train.loop.Trainer` adds the loop that drives them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .. import runlock
from ..checkpoint import LATEST
from ..config import Config
from ..warmstart import warm_start
from .build import (build_data, build_health, build_model, build_optimizer, check_families, describe_precision,
                    dist_info, half_on_cpu_warning, resolve_device, resolve_precision, wrap_model)
from .checkpoints import Checkpoints
from .step import Batch, BatchMaker, WeightUpdate

log = logging.getLogger("iwm.train")  # the package's name, which the log lines have always shown


class RunParts:
    """One run in one directory: data, model, optimizer, the step, checkpoints, health checks and
    the lock on the directory. Building it refuses a busy or read-only directory."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.rank, self.world = dist_info()
        self.device = resolve_device(cfg.run.device)
        self.amp_dtype = resolve_precision(cfg.run.precision, self.device)
        self.precision = describe_precision(cfg.run.precision, self.amp_dtype)
        warning = half_on_cpu_warning(cfg.run.precision, self.device)
        if warning and self.rank == 0:
            log.warning(warning)
        self.run_dir = Path(cfg.run.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"

        check_families(cfg)  # a family that fails says so in one line, before the data is read
        data = build_data(cfg, self.rank, self.world, self.device)
        self.dataset, self.sampler, self.loader = data.dataset, data.sampler, data.loader
        self.on_device = data.on_device  # data.on_device: the images live on the device, the loader is idle
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = cfg.optim.max_steps or cfg.optim.epochs * self.steps_per_epoch

        self.model = build_model(cfg).to(self.device)
        if not (self.ckpt_dir / LATEST).is_file():  # a fresh run may start from weights trained elsewhere
            warm_start(self.model, cfg)
        self.sharded = self.world > 1 and cfg.run.parallel == "fsdp"
        self.net = wrap_model(self.model, cfg, self.world, self.device, self.amp_dtype)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.batches = BatchMaker(cfg, self.rank, self.world, self.device)
        self.update = WeightUpdate(self.model, self.net, self.optimizer, self.scaler, cfg, self.world, self.sharded,
                                   self.device)
        self.checkpoints = Checkpoints(self.ckpt_dir, self.model, self.optimizer, self.scaler, cfg, self.rank,
                                       self.world, self.sharded)
        # the step's parts, under the names benchmarks and tests reach them by
        self.masker = self.batches.masker
        self.params, self.fused = self.update.params, self.update.fused
        self.step = 0
        self.losses: list[tuple[int, float]] = []
        # one writer per run directory, refused here (before any step) if busy or read-only
        self.lock = runlock.hold(self.run_dir, self.ckpt_dir) if self.rank == 0 else None
        self.health = build_health(cfg, self.device, self.amp_dtype, self.rank, self.sharded)

    @property
    def skipped(self) -> torch.Tensor:
        """Steps skipped so far for a non-finite loss or gradient (a count on the device)."""
        return self.update.skipped

    def make_batch(self, crops: torch.Tensor, step: int) -> Batch:
        return self.batches(crops, step)

    def train_step(self, crops: torch.Tensor) -> torch.Tensor:
        loss = self.update(self.make_batch(crops, self.step), self.step, self.total_steps, self.amp_dtype)
        self.step += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        return self.checkpoints.state_dict(self.step, self.losses)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.losses = self.checkpoints.load_state_dict(state)

    def save(self, periodic: bool) -> None:
        self.checkpoints.save(self.step, self.losses, periodic)

    def maybe_resume(self) -> bool:
        state = self.checkpoints.newest(self.device)
        if state is not None:
            self.load_state_dict(state)
        return state is not None
