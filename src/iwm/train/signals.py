"""Stop signals (SLURM, ``timeout``, Ctrl-C) turned into a clean stop of a run: at once during
start-up, after checkpointing the step in flight once training has begun."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

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

    def agreed(self, world: int, at_log: bool, device: torch.device) -> bool:
        """Whether the run stops after this step. Over several processes they agree at log steps
        only (one all-reduce there), so that the other steps stay free of syncs."""
        if world == 1:
            return self.signum is not None
        if not at_log:
            return False
        flag = torch.tensor(float(self.signum or 0), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signum = int(flag.item()) or None
        return self.signum is not None

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
    raise mid-step, before it could checkpoint. The main process ends the workers itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
