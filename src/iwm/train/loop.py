"""The pretraining loop: data -> crops -> two views (photometric) -> masks -> model -> loss.

Everything random in a step (photometric parameters, masks) is drawn from a generator seeded
by (seed, step), and the data order by (seed, epoch); so a resumed run, or a run split over
several processes with the same global batch, trains on exactly the same inputs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import LATEST, intact_note
from ..config import Config
from .parts import RunParts
from .records import Records, losses_since_log
from .signals import Preempted, StopNow, StopSignals, end_workers


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    losses: list[tuple[int, float]]
    seconds: float


@dataclass
class LogWindow:
    """The steps since the last log: when it was, its step, and their losses still on the device."""
    start: float
    step: int
    pending: list[tuple[int, torch.Tensor]] = field(default_factory=list)


class Trainer(RunParts):
    """One pretraining run in one directory; re-creating it on the same directory resumes.
    :class:`RunParts` holds what the run is made of; this class is the loop that drives it."""

    def __init__(self, cfg: Config, stops: StopSignals | None = None):
        # a stop signal during the set-up (data decoding, the health monitor's held-out images)
        # stops the run cleanly, as one in the loop does
        self.stops = stops if stops is not None else StopSignals()
        self.postfix: dict[str, str] = {}  # the progress bar's latest figures
        # samples a streamed data set could not read since this process started (None: not streamed)
        self.bad_samples: int | None = None
        with self.stops:
            super().__init__(cfg)

    def fit(self, until: int | None = None) -> TrainResult:
        """Train to the last step (or stop after step ``until``), checkpointing on the way
        and at the end. A stop signal (:data:`STOP_SIGNALS`) raises :class:`Preempted`: at once
        during start-up, after checkpointing the step in flight once training has begun."""
        stop = min(until or self.total_steps, self.total_steps)
        with self.stops, ExitStack() as done:  # on the way out: the records closed, then the lock released
            self.stops.start_up()
            if self.lock is not None:
                self.lock.acquire()  # a no-op unless an earlier fit released it
                done.callback(self.lock.release)
            t_start = time.perf_counter()
            resumed = self.maybe_resume()
            first_health = self.health is not None and self.step == 0
            records = None
            if self.rank == 0:
                records = done.enter_context(Records(self.cfg, self._start_line(resumed), self.step, self.total_steps,
                                                     self.steps_per_epoch, first_health, self.postfix))
            if first_health:
                self._check_health(records)  # the random initialisation: the baseline
            self.stops.join(self.world)
            self.stops.defer()  # from here a signal lets the step in flight finish and checkpoint
            t_start = time.perf_counter()
            self._loop(stop, records)
            self.save(periodic=True)
            if records is not None:
                records.figures(self.losses)
        final = self.losses[-1][1] if self.losses else float("nan")
        return TrainResult(self.run_dir, self.step, final, self.losses, time.perf_counter() - t_start)

    def _start_line(self, resumed: bool) -> str:
        spread = f", {'FSDP' if self.sharded else 'DDP'} over {self.world} processes" if self.world > 1 else ""
        return (f"{'resuming' if resumed else 'starting'} run in {self.run_dir}: {self.total_steps} steps "
                f"({self.steps_per_epoch} per epoch) on {self.device} in {self.precision}{spread}")

    def _loop(self, stop: int, records: Records | None) -> None:
        """The training steps up to ``stop``, with their logs, health checks and checkpoints."""
        cfg = self.cfg
        window = LogWindow(time.perf_counter(), self.step)
        while self.step < stop:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch, start)
            self.dataset.set_epoch(epoch)
            loader = self._open_loader()
            batches = self._crops(loader)
            try:
                for crops in batches:
                    window.pending.append((self.step, self.train_step(crops)))
                    stopping = self.stops.agreed(self.step)
                    if self.step % cfg.run.log_every == 0 or self.step == stop or stopping:
                        self._log(window, records)  # a stop records the steps since the last log too
                    if stopping:
                        self.save(periodic=False)
                        raise Preempted(self.stops.signum, self.step, self.stops.came)
                    if self.health is not None and (self.step % cfg.eval.every == 0 or self.step == self.total_steps):
                        window.start += self._check_health(records)  # not counted in images/s
                    if self.step % cfg.run.ckpt_every == 0 and self.step < stop:
                        self.save(periodic=True)
                    if self.step >= stop:
                        break
            except StopNow as now:
                if not now.between_steps:  # a second signal mid-step: the step's state is not whole
                    raise Preempted(now.signum, None, text=f"{now}; {intact_note(self.ckpt_dir)}") from None
                if window.pending:
                    self._log(window, records)
                self.save(periodic=False)  # the loop waited for data: the last finished step is whole
                raise Preempted(now.signum, self.step) from None
            finally:
                batches.close()
                end_workers(loader)  # after any save: ending a hung worker takes PyTorch 5 s
        self.stops.settle()

    def _log(self, window: LogWindow, records: Records | None) -> None:
        """The losses of the steps since the last log (the loop's only sync), their record, and the
        check for too many non-finite steps."""
        now = time.perf_counter()
        rate = (self.step - window.step) * self.cfg.data.batch_size * self.world / (now - window.start)
        self.losses += losses_since_log(window.pending, self.world, self.device)
        bad = self._bad_samples()  # every process takes part in the sum
        if records is not None:
            records.train(self.step, self.losses[-1][1], rate, int(self.skipped.item()), bad)
        window.pending, window.start, window.step = [], now, self.step
        self._check_finite()

    def _bad_samples(self) -> int | None:
        """Unreadable samples so far, over all processes (each reads its own streams)."""
        if self.bad_samples is None or self.world == 1:
            return self.bad_samples
        count = torch.tensor([self.bad_samples], device=self.device)
        torch.distributed.all_reduce(count)
        return int(count.item())

    def _open_loader(self) -> Iterator | None:
        """The loader's iterator over this epoch (its workers start here), or None where the crops
        are cut on the device."""
        if self.on_device is not None:
            return None
        with self.stops.held():  # see ignore_stop_signals
            return iter(self.loader)

    def _crops(self, loader: Iterator | None) -> Iterator[torch.Tensor]:
        """This process's uint8 crops, one batch per step left in the epoch: from the loader's
        workers, or cut on the device (drawn lazily, so that each batch knows its step)."""
        if loader is not None:
            while True:
                with self.stops.waiting(alone=self.world == 1):  # a read may stall (a hung NFS mount)
                    item = next(loader, None)
                if item is None:
                    return
                if len(item) > 2:  # a streamed batch says how many of its samples were unreadable
                    self.bad_samples = (self.bad_samples or 0) + int(item[2])
                yield item[0]
        for glob in self.sampler.global_batches():
            yield self.on_device.crops(glob, self.step, self.rank, self.world)

    def _check_finite(self) -> None:
        error = self.update.too_many_skips(self.cfg.run.max_skips, self.step, self.ckpt_dir / LATEST)
        if error is not None:
            # skipped steps never touched the weights; should an earlier, finite step have made them
            # overflow, the save refuses them and says which checkpoint is sound
            self.save(periodic=False)
            raise error

    def _check_health(self, records: Records | None) -> float:
        """Measure the run's health now and report it (rank 0); returns the seconds it took."""
        t0 = time.perf_counter()
        rec = self.health(self.model, self.step)
        if records is not None:
            records.health(rec, self.step)
        return time.perf_counter() - t0


def pretrain(cfg: Config, stops: StopSignals | None = None) -> TrainResult:
    """Train (or resume) the run ``cfg.run.out_dir`` to its last step. A stop signal, from the
    start on, raises :class:`Preempted` (``stops``: the caller's, entered before its own set-up)."""
    stops = stops if stops is not None else StopSignals()
    with stops:
        return Trainer(cfg, stops).fit()
