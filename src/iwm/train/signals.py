"""Stop signals (SLURM, ``timeout``, Ctrl-C) turned into a clean stop of a run: at once during
start-up, after checkpointing the step in flight once training has begun."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "stopped on request, checkpointed, run me again"
# what schedulers send before preempting (SLURM: SIGTERM, or SIGUSR1 with --signal), and Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# One stop may arrive twice: SLURM signals every process of a job step, and torchrun forwards the
# signal it got to its workers as well. A repeat this soon after the first is that same stop; a
# later one is a second request, which ends the run at once.
REPEAT_GRACE_S = 1.0


class Preempted(BaseException):
    """A stop signal arrived. In the loop: the step finished, a checkpoint was written, the run
    stopped. During start-up (``step`` None): the run stopped before training anything new.

    A BaseException, as KeyboardInterrupt: raised from a signal handler at any point of
    start-up, it must pass through the ``except Exception`` that turn a read error into "skip
    this image" or "this checkpoint is damaged"."""

    def __init__(self, signum: int, step: int | None, came: int | None = None, text: str | None = None):
        name = signal.Signals(signum).name
        if text is None and step is None:
            text = f"stopped by signal {name} during start-up, before any new step; run the same command to resume"
        elif text is None:
            # several processes agree on the stop a step after the signal: say when it came
            when = f" (the signal came during step {came})" if came is not None and came != step else ""
            text = (f"stopped by signal {name} after step {step}{when}; checkpoint written, run the same command "
                    "to resume")
        super().__init__(text)
        self.signum, self.step = signum, step


class StopNow(Preempted):
    """A stop that cannot wait for the step's end: a second signal, or a signal while one process
    waits for its data (a stalled read may never return). ``between_steps``: the weights are
    those of the last finished step, so the loop can still save them."""

    def __init__(self, signum: int, between_steps: bool):
        name = signal.Signals(signum).name
        super().__init__(signum, None, text=f"stopped at once by a second signal {name}, without saving the step in "
                                            "flight; run the same command to resume from the newest checkpoint")
        self.between_steps = between_steps


class StopSignals:
    """Turns the stop signals into a clean stop of a run, while it is entered (re-entrant).

    Until :meth:`defer`, a signal raises :class:`Preempted` at once, wherever the run is: start-up
    (the config, decoding data, the step-0 health check) has trained nothing that a checkpoint
    could keep, and may last minutes. After it, the signal is only noted: the loop finishes the
    step in flight, checkpoints, then stops. While the loop waits for data (:meth:`waiting`) and
    on a second signal, it raises :class:`StopNow` instead."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False
        self.came: int | None = None  # the step during which this process saw the signal
        self._waiting = False
        self._first_at = 0.0
        self._depth = 0
        self._old: dict = {}
        self._group: dist.ProcessGroup | None = None  # gloo, on the CPU: the flag's all-reduce never syncs a GPU
        self._pending: tuple[dist.Work, torch.Tensor] | None = None

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
        self.signum, self.deferred, self.came, self._pending = None, False, None, None

    def defer(self) -> None:
        self.deferred = True

    def _handle(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            if not self.deferred:
                raise Preempted(signum, None)
            if self._waiting:  # no step in flight: nothing to wait for, and the read may never return
                raise StopNow(signum, between_steps=True)
        elif self.deferred and now - self._first_at >= REPEAT_GRACE_S:
            raise StopNow(signum, between_steps=self._waiting)

    @contextmanager
    def waiting(self, alone: bool) -> Iterator[None]:
        """The loop waits for its next batch: a signal raises :class:`StopNow` at once (one process,
        ``alone``; several must agree on the step they stop after, in :meth:`agreed`)."""
        self._waiting = alone
        try:
            yield
        finally:
            self._waiting = False

    def join(self, world: int) -> None:
        """Over several processes, make the group the stop flag is agreed in (a collective: every
        process calls it, once)."""
        if world > 1 and self._group is None:
            self._group = dist.new_group(backend="gloo")

    def agreed(self, step: int) -> bool:
        """Whether the run stops after step ``step`` (called after every step). Over several
        processes, each step starts an all-reduce of the flag in the background and reads the one
        the step before started: all stop at the same step, at most two after the signal, and
        no step waits on the others for it."""
        if self.signum is not None and self.came is None:
            self.came = step
        if self._group is None:
            return self.signum is not None
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            self._pending = None
            if flag.item():
                self.signum = self.signum or int(flag.item())
                return True
        flag = torch.tensor(float(self.signum or 0))
        self._pending = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag
        return False

    def settle(self) -> None:
        """Finish the flag's all-reduce in flight, before the processes leave the loop together."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None

    @staticmethod
    @contextmanager
    def held() -> Iterator[None]:
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
    raise mid-step, before it could checkpoint. The main process ends the workers itself
    (:func:`end_workers`)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def end_workers(loader: object) -> None:
    """End the workers of a DataLoader iterator left mid-epoch (a stop, the last step) at once, a
    hung one included. They ignore the stop signals, so PyTorch's own shutdown would wait 5 s for
    each, send a SIGTERM they ignore, wait 5 s more and leave them running, and multiprocessing's
    exit-time join would then wait forever. They are killed first: the batches they were preparing
    are not needed; then PyTorch's shutdown joins them and closes the queues at once."""
    shutdown = getattr(loader, "_shutdown_workers", None)  # private, but PyTorch has no public way
    if shutdown is None:  # no workers (data.num_workers=0, or the crops are cut on the device)
        return
    main = threading.current_thread() is threading.main_thread()
    # PyTorch's SIGCHLD handler would report the killed workers as failed, raising here
    old = signal.signal(signal.SIGCHLD, signal.SIG_DFL) if main else None
    try:
        for worker in loader._workers:
            if worker.is_alive():
                worker.kill()
        shutdown()
    finally:
        if main:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL if old is None else old)
