"""The pretraining loop: data -> crops -> two views (photometric) -> masks -> model -> loss.

Everything random in a step (photometric parameters, masks) is drawn from a generator seeded
by (seed, step), and the data order by (seed, epoch); so a resumed run, or a run split over
several processes with the same global batch, trains on exactly the same inputs.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from . import config as config_mod
from . import files, runlock
from .checkpoint import LATEST, load_newest_sound, save_checkpoint
from .config import Config, EvalConfig
from .data import ResumableSampler, build_dataset, normalize
from .data.device_crops import device_images
from .eval.features import subset
from .eval.health import HealthMonitor, plot_health, read_health
from .masks import MultiBlockMasker
from .models import IWM, build_encoder, build_predictor
from .parallel import (full_tensor, load_model_state, load_optimizer_state, model_state, optimizer_state,
                       shard)
from .photometric import PhotometricSampler, apply, blur_kernel_size
from .schedules import ema_momentum, learning_rate, weight_decay
from .warmstart import warm_start

log = logging.getLogger(__name__)


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "stopped on request, checkpointed, run me again"
# what schedulers send before preempting (SLURM: SIGTERM, or SIGUSR1 with --signal), and Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(BaseException):
    """A stop signal arrived. In the loop: the step finished, a checkpoint was written, the run
    stopped. During start-up (``step`` None): the run stopped before training anything new.

    A BaseException, as KeyboardInterrupt: raised from a signal handler at any point of
    start-up, it must pass through the ``except Exception`` that turn a read error into "skip
    this image" or "this checkpoint is damaged"."""

    def __init__(self, signum: int, step: int | None):
        name = signal.Signals(signum).name
        if step is None:
            text = f"stopped by signal {name} during start-up, before any new step; run the same command to resume"
        else:
            text = f"stopped by signal {name} after step {step}; checkpoint written, run the same command to resume"
        super().__init__(text)
        self.signum, self.step = signum, step


class StopSignals:
    """Turns the stop signals into a clean stop of a run, while it is entered (re-entrant).

    Until :meth:`defer`, a signal raises :class:`Preempted` at once, wherever the run is: start-up
    (the config, decoding data, the step-0 health check) has trained nothing that a checkpoint
    could keep, and may last minutes. After it, the signal is only noted: the loop finishes the
    step in flight, checkpoints, then stops."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False
        self._depth = 0
        self._old: dict = {}

    def __enter__(self) -> "StopSignals":
        # signal handlers can only be set from the main thread; elsewhere the signals stay as they are
        if self._depth == 0 and threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            for sig, old in self._old.items():
                signal.signal(sig, old)
            self._old = {}

    def start_up(self) -> None:
        self.signum, self.deferred = None, False

    def defer(self) -> None:
        self.deferred = True

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = self.signum or signum
        if not self.deferred:
            raise Preempted(signum, None)

    @staticmethod
    @contextmanager
    def held():
        """The stop signals wait while DataLoader workers are forked: a worker starts with them
        blocked and ignores them before it unblocks them (:func:`ignore_stop_signals`), so that no
        signal finds a worker between its birth and that point."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a signal that came meanwhile is handled now


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers' init: ignore the stop signals. SLURM, ``timeout`` and a terminal's
    Ctrl-C signal the whole process group; a worker they killed would make the main process
    raise mid-step, before it could checkpoint. The main process ends the workers itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class NonFiniteError(FloatingPointError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    losses: list[tuple[int, float]]
    seconds: float


# ----------------------------------------------------------------------------------------------
# set-up helpers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32. ``auto``: bf16 on a CUDA GPU that has it, fp32
    elsewhere (CPU autocast in bf16 is many times slower than fp32 on CPUs without native bf16);
    an explicit value is honoured on any device."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def describe_precision(name: str, dtype: torch.dtype | None) -> str:
    """The precision a run computes in and why, for its start-up line."""
    chosen = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    why = "auto: bf16 on CUDA, fp32 on the CPU" if name == "auto" else name
    return f"{chosen} (run.precision={why})"


def half_on_cpu_warning(name: str, device: torch.device) -> str | None:
    """The warning for an explicit bf16/fp16 on the CPU, or None."""
    if device.type != "cpu" or name not in ("bf16", "fp16"):
        return None
    return (f"run.precision={name} on the CPU: autocast in {name} is many times slower than fp32 on CPUs "
            "without native bf16 arithmetic; run.precision=auto (or fp32) computes in fp32 on the CPU")


# The held-out sizes of the health checks on a CPU for images over CPU_HEALTH_MAX_SIZE px, where
# the defaults (sized for 32 px) make a check last many minutes (ViT-B/16 at 224 px): about a
# hundred image passes through the networks instead of a few thousand.
CPU_HEALTH_MAX_SIZE = 64
CPU_HEALTH_SIZES = {"health_test": 16, "health_bank": 32, "health_loss_batch": 4, "health_mrr_images": 1,
                    "health_mrr_bank": 8}


def health_config(cfg: Config, device: torch.device) -> tuple[Config, str | None]:
    """The config the health checks measure with, and a line saying what was cut (None: nothing).
    On a CPU with images over 64 px, each held-out size left at its default is cut to
    ``CPU_HEALTH_SIZES``; sizes the config sets itself are kept, so a user can still ask for more."""
    if device.type != "cpu" or cfg.data.image_size <= CPU_HEALTH_MAX_SIZE:
        return cfg, None
    default = EvalConfig()
    cut = {k: v for k, v in CPU_HEALTH_SIZES.items()
           if getattr(cfg.eval, k) == getattr(default, k) and v < getattr(cfg.eval, k)}
    if not cut:
        return cfg, None
    small = copy.deepcopy(cfg)
    for k, v in cut.items():
        setattr(small.eval, k, v)
    config_mod.validate(small)
    sizes = ", ".join(f"eval.{k}={v}" for k, v in cut.items())
    return small, (f"health checks on the CPU at {cfg.data.image_size} px use {sizes} (the defaults suit 32 px "
                   "and would take many minutes a check here; set these keys to choose other sizes)")


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 1)


def build_model(cfg: Config) -> IWM:
    torch.manual_seed(cfg.run.seed)  # the same seed gives the same initial weights
    return IWM(build_encoder(cfg), build_predictor(cfg), cfg.predictor.per_block, cfg.optim.loss,
               cfg.mask.length_groups)


def build_optimizer(model: IWM, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW over encoder and predictor; biases, norms and 1-d tensors get no weight decay.
    Fused on CUDA and on the CPU (sharded FSDP parameters included): the fused kernel takes the
    skip-this-step flag as a tensor, so a non-finite step costs no host sync, and the CPU tests
    run the very path GPUs take."""
    decay, no_decay = [], []
    for module in (model.encoder, model.predictor):
        for p in module.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
                             fused=fused)


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ----------------------------------------------------------------------------------------------


class Trainer:
    """One pretraining run in one directory; re-creating it on the same directory resumes."""

    def __init__(self, cfg: Config, stops: StopSignals | None = None):
        # a stop signal during the set-up below (data decoding, the health monitor's held-out
        # images) stops the run cleanly, as one in the loop does
        self.stops = stops if stops is not None else StopSignals()
        with self.stops:
            self._set_up(cfg)

    def _set_up(self, cfg: Config) -> None:
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

        self.dataset = build_dataset(cfg.data, cfg.run.seed, "train")
        source: torch.utils.data.Dataset = self.dataset
        if 0 < cfg.data.subset < len(self.dataset):  # a seeded random subset, not the first files
            source = subset(self.dataset, cfg.data.subset, cfg.run.seed)
        self.sampler = ResumableSampler(len(source), cfg.data.batch_size, cfg.run.seed, self.rank, self.world)
        self.loader = DataLoader(source, batch_size=cfg.data.batch_size, sampler=self.sampler,
                                 num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                                 drop_last=True, persistent_workers=False, worker_init_fn=ignore_stop_signals)
        # data.on_device: the images live on the device and the loader is not used
        self.on_device = device_images(source, cfg.data, cfg.run.seed, self.device) if cfg.data.on_device else None
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = cfg.optim.max_steps or cfg.optim.epochs * self.steps_per_epoch

        self.model = build_model(cfg).to(self.device)
        if not (self.ckpt_dir / LATEST).is_file():  # a fresh run may start from weights trained elsewhere
            warm_start(self.model, cfg)
        self.net: torch.nn.Module = self.model
        self.sharded = self.world > 1 and cfg.run.parallel == "fsdp"
        if self.sharded:  # in place: self.net is self.model, its parameters now shards
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(self.device.type, (self.world,))
            shard(self.model, mesh, self.amp_dtype if self.amp_dtype == torch.bfloat16 else None)
        elif self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.run.compile:
            self.net = torch.compile(self.net)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        grid = cfg.data.image_size // cfg.model.patch_size
        self.masker = MultiBlockMasker(cfg.mask, grid)
        self.photometric = PhotometricSampler(cfg.aug)
        self.kernel_size = blur_kernel_size(cfg.aug, cfg.data.image_size)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.fused = bool(self.optimizer.defaults.get("fused"))
        self.step = 0
        self.losses: list[tuple[int, float]] = []
        # non-finite steps, counted on the device so that checking them costs no sync per step
        self.skipped = torch.zeros((), device=self.device)
        self.consecutive = torch.zeros((), device=self.device)
        self.worst_run = torch.zeros((), device=self.device)  # longest streak of skipped steps
        # one writer per run directory, refused here (before any step) if busy or read-only
        self.lock = runlock.hold(self.run_dir, self.ckpt_dir) if self.rank == 0 else None
        # training health on held-out data: rank 0 measures it; under FSDP every process takes
        # part, as the sharded networks gather their weights collectively
        self.health = None
        if cfg.eval.every and (self.rank == 0 or self.sharded):
            health_cfg, cut = health_config(cfg, self.device)
            if cut and self.rank == 0:
                log.info(cut)
            try:
                self.health = HealthMonitor(health_cfg, self.device, self.amp_dtype, verbose=self.rank == 0)
            except FileNotFoundError as err:  # no held-out split (a folder of training images only)
                log.warning("training health is off: %s", err)
        self.postfix: dict[str, str] = {}  # the progress bar's latest figures

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "encoder": model_state(self.model.encoder),
            "predictor": model_state(self.model.predictor),
            "target_encoder": model_state(self.model.target_encoder),
            "optimizer": optimizer_state(self.model, self.optimizer),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "losses": torch.tensor(self.losses, dtype=torch.float64).reshape(-1, 2),
            "config": self.cfg.to_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_model_state(self.model.encoder, state["encoder"], "encoder")
        load_model_state(self.model.predictor, state["predictor"], "predictor")
        load_model_state(self.model.target_encoder, state["target_encoder"], "target encoder")
        load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.losses = [(int(s), float(v)) for s, v in state["losses"].tolist()]
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self, periodic: bool) -> None:
        # gathering sharded weights is a collective: every process takes part, rank 0 writes
        state = self.state_dict() if self.rank == 0 or self.sharded else None
        if self.rank == 0:
            save_checkpoint(state, self.ckpt_dir, self.step, self.cfg.run.keep, periodic)
        if self.world > 1:
            dist.barrier()

    def maybe_resume(self) -> bool:
        state = load_newest_sound(self.ckpt_dir, map_location=self.device)
        if state is not None:
            self.load_state_dict(state)
        return state is not None

    # -- one step ------------------------------------------------------------------------------

    def make_batch(self, crops: torch.Tensor, step: int):
        """uint8 crops (this process's slice of the global batch) -> model inputs x, y, a_x->y,
        masks. Parameters and masks are drawn for the whole global batch, then sliced, so that
        every process count sees the same ones."""
        b = crops.shape[0]
        g = step_generator(self.cfg.run.seed, step)
        glob = b * self.world
        source, target = self.photometric.sample_pair(glob, g)
        masks = self.masker(glob, g)
        sl = slice(self.rank * b, (self.rank + 1) * b)
        # non-blocking: a blocking copy from the host waits for the GPU's queue to drain
        source = source[sl].to(self.device, non_blocking=True)
        target = target[sl].to(self.device, non_blocking=True)
        masks = masks[sl].to(self.device)
        c = crops.to(self.device, non_blocking=True).float().div_(255.0)
        # the transformations run where the model lives, batched
        x = apply(c, source, self.kernel_size)
        y = apply(c, target, self.kernel_size)
        return normalize(x), normalize(y), source.action(target), masks

    def train_step(self, crops: torch.Tensor) -> torch.Tensor:
        o, total = self.cfg.optim, self.total_steps
        lr = learning_rate(o, self.step, total)
        wd = weight_decay(o, self.step, total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group["apply_wd"]:
                group["weight_decay"] = wd
        x, y, action, masks = self.make_batch(crops, self.step)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else nullcontext())
        # gradient accumulation: micro-batches of the same batch, one optimizer step; DDP and
        # FSDP reduce gradients on the last micro-batch only
        n = o.accum_steps
        micro = x.shape[0] // n
        loss = torch.zeros((), device=self.device)
        for i in range(n):
            sl = slice(i * micro, (i + 1) * micro)
            sync_now = i == n - 1 or self.world == 1
            if self.sharded:
                self.model.set_requires_gradient_sync(sync_now)
            with autocast, (nullcontext() if sync_now or self.sharded else self.net.no_sync()):
                part = self.net(x[sl], y[sl], action[sl], masks[sl]) / n
            self.scaler.scale(part).backward()
            loss += part.detach()
        self.scaler.unscale_(self.optimizer)  # a no-op unless fp16
        clip = o.clip_grad if o.clip_grad > 0 else float("inf")
        norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.params, clip))  # sharded: the global norm
        bad = (~torch.isfinite(norm) | ~torch.isfinite(loss.detach())).float()
        if self.scaler.is_enabled():  # fp16: the scaler skips non-finite steps itself
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.fused:  # the fused kernel skips the update where found_inf, with no host sync
            self.optimizer.found_inf = bad
            self.optimizer.step()
        elif not bad.item():  # devices without a fused AdamW (MPS): one scalar sync per step
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += bad
        self.consecutive = (self.consecutive + bad) * bad
        self.worst_run = torch.maximum(self.worst_run, self.consecutive)
        self.model.update_target(ema_momentum(o, self.step, total))
        self.step += 1
        return loss.detach()

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, until: int | None = None) -> TrainResult:
        """Train to the last step (or stop after step ``until``), checkpointing on the way
        and at the end. A stop signal (:data:`STOP_SIGNALS`) raises :class:`Preempted`: at once
        during start-up, after checkpointing the step in flight once training has begun."""
        cfg = self.cfg
        stop = min(until or self.total_steps, self.total_steps)
        with self.stops:
            self.stops.start_up()
            if self.lock is not None:
                self.lock.acquire()  # a no-op unless an earlier fit released it
            writer = bar = metrics = None
            t_start = time.perf_counter()
            try:
                resumed = self.maybe_resume()
                if self.rank == 0:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    config_mod.save(cfg, self.run_dir / "config.yaml")
                    from torch.utils.tensorboard import SummaryWriter

                    writer = SummaryWriter(str(self.run_dir / "tensorboard"))
                    spread = (f", {'FSDP' if self.sharded else 'DDP'} over {self.world} processes"
                              if self.world > 1 else "")
                    log.info("%s run in %s: %d steps (%d per epoch) on %s in %s%s",
                             "resuming" if resumed else "starting", self.run_dir, self.total_steps,
                             self.steps_per_epoch, self.device, self.precision, spread)
                if self.rank == 0 and cfg.run.progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=self.total_steps, initial=self.step, desc="pretrain", unit="step",
                               dynamic_ncols=True)
                metrics = self._open_metrics() if self.rank == 0 else None
                if self.health is not None and self.step == 0:
                    self._check_health(writer, metrics, bar)  # the random initialisation: the baseline
                self.stops.defer()  # from here a signal lets the step in flight finish and checkpoint
                t_start = time.perf_counter()
                self._loop(stop, writer, metrics, bar)
                self.save(periodic=True)
                if self.rank == 0:
                    plot_losses(self.losses, self.run_dir / "loss.png")
                    health = read_health(self.run_dir / "metrics.jsonl")
                    if health:
                        plot_health(health, self.run_dir / "health.png", cfg)
            finally:
                if bar is not None:
                    bar.close()
                if metrics is not None:
                    metrics.close()
                if writer is not None:
                    writer.close()
                if self.lock is not None:
                    self.lock.release()
        final = self.losses[-1][1] if self.losses else float("nan")
        return TrainResult(self.run_dir, self.step, final, self.losses, time.perf_counter() - t_start)

    def _loop(self, stop: int, writer, metrics, bar) -> None:
        """The training steps up to ``stop``, with their logs, health checks and checkpoints."""
        cfg = self.cfg
        t_log, step_log = time.perf_counter(), self.step
        pending: list[tuple[int, torch.Tensor]] = []
        while self.step < stop:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch, start)
            self.dataset.set_epoch(epoch)
            batches = self._crops()
            try:
                for crops in batches:
                    pending.append((self.step, self.train_step(crops)))
                    at_log = self.step % cfg.run.log_every == 0 or self.step == stop
                    if at_log:
                        now = time.perf_counter()
                        rate = (self.step - step_log) * cfg.data.batch_size * self.world / (now - t_log)
                        self._log(pending, rate, writer, metrics, bar)
                        pending, t_log, step_log = [], now, self.step
                        self._check_finite()
                    if self.health is not None and (self.step % cfg.eval.every == 0 or self.step == self.total_steps):
                        t_log += self._check_health(writer, metrics, bar)  # not counted in images/s
                    if self._signalled(at_log):
                        self.save(periodic=False)
                        raise Preempted(self.stops.signum, self.step)
                    if self.step % cfg.run.ckpt_every == 0 and self.step < stop:
                        self.save(periodic=True)
                    if self.step >= stop:
                        break
            finally:
                batches.close()  # the loader's workers end here, before a stop goes further up

    def _crops(self):
        """This process's uint8 crops, one batch per step left in the epoch: from the loader's
        workers, or cut on the device (drawn lazily, so that each batch knows its step)."""
        if self.on_device is None:
            with self.stops.held():  # the workers start here (see ignore_stop_signals)
                batches = iter(self.loader)
            for crops, _ in batches:
                yield crops
            return
        for glob in self.sampler.global_batches():
            yield self.on_device.crops(glob, self.step, self.rank, self.world)

    def _open_metrics(self):
        """metrics.jsonl for appending, without the records this run will write again: those of
        steps after the checkpoint we resumed from (a killed run may have logged steps it will now
        redo), and a step-0 health record when the step-0 check is about to run again (a run
        killed before its first checkpoint)."""
        path = self.run_dir / "metrics.jsonl"
        redo_first_health = self.health is not None and self.step == 0
        if path.is_file():
            keep = []
            for line in path.read_text().splitlines():
                rec = json.loads(line) if line.strip() else None
                if rec is None or rec["step"] > self.step or (redo_first_health and rec["kind"] == "health"):
                    continue
                keep.append(line)
            files.write_text(path, "".join(line + "\n" for line in keep))
        return open(path, "a")

    def _signalled(self, at_log: bool) -> bool:
        if self.world == 1:
            return self.stops.signum is not None
        if not at_log:  # processes agree on stopping at log steps only, to keep steps sync-free
            return False
        flag = torch.tensor(float(self.stops.signum or 0), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stops.signum = int(flag.item()) or None
        return self.stops.signum is not None

    def _check_finite(self) -> None:
        worst = int(self.worst_run.item())
        if worst > self.cfg.run.max_skips:
            self.save(periodic=False)  # skipped steps never touched the weights: this state is sound
            raise NonFiniteError(
                f"{worst} consecutive steps had a non-finite loss or gradient (run.max_skips="
                f"{self.cfg.run.max_skips}), {int(self.skipped.item())} in all, last at step {self.step}; the "
                f"weights from before the fault are in {self.ckpt_dir / LATEST}. Lower optim.lr, set "
                "optim.clip_grad, use run.precision=fp32, or check the data.")

    def _check_health(self, writer, metrics, bar) -> float:
        """Measure and log the run's health now; returns the seconds it took."""
        t0 = time.perf_counter()
        rec = self.health(self.model, self.step)
        if self.rank == 0:
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("step", "kind"):
                    writer.add_scalar(f"health/{k}", float(v), self.step)
            if rec.get("knn_top1") is not None:
                self.postfix["knn"] = f"{rec['knn_top1']:.1%}"
            self.postfix["rank"] = f"{rec['effective_rank']:.1f}"
            self.postfix.pop("health", None)
            if rec["collapse"]:
                self.postfix["health"] = "COLLAPSE?"
            if bar is not None:
                bar.set_postfix(self.postfix)
        return time.perf_counter() - t0

    def _log(self, pending, rate, writer, metrics, bar) -> None:
        # The only host-device sync of the loop: losses stay on the device between logs.
        values = torch.stack([v for _, v in pending]).float().cpu().tolist()
        if self.world > 1:
            t = torch.tensor(values, device=self.device)
            dist.all_reduce(t)
            values = (t / self.world).tolist()
        for (s, _), v in zip(pending, values):
            self.losses.append((s + 1, v))
        loss = values[-1]
        if self.rank != 0:
            return
        o, total = self.cfg.optim, self.total_steps
        rec = {"kind": "train", "step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": loss,
               "lr": learning_rate(o, self.step - 1, total), "wd": weight_decay(o, self.step - 1, total),
               "momentum": ema_momentum(o, self.step - 1, total), "images_per_s": rate,
               "skipped_steps": int(self.skipped.item())}
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        for k in ("loss", "lr", "wd", "momentum", "images_per_s"):
            writer.add_scalar(f"train/{k}", rec[k], self.step)
        if bar is not None:
            bar.update(self.step - bar.n)
            self.postfix.update(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
            bar.set_postfix(self.postfix)


def plot_losses(losses: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if losses:
        steps, values = zip(*losses)
        ax.plot(steps, values, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (L2 to target tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    files.save_figure(fig, path)
    plt.close(fig)


def pretrain(cfg: Config, stops: StopSignals | None = None) -> TrainResult:
    """Train (or resume) the run ``cfg.run.out_dir`` to its last step. A stop signal, from the
    start on, raises :class:`Preempted` (``stops``: the caller's, entered before its own set-up)."""
    stops = stops if stops is not None else StopSignals()
    with stops:
        return Trainer(cfg, stops).fit()
