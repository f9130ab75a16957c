"""One writer per run directory: an exclusive ``flock`` on ``<run>/.lock``, which records who holds
it; the kernel drops the lock when its process dies, so even ``kill -9`` never blocks the next run
(its forked loader workers let go of it at the fork)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
import weakref
from pathlib import Path

from .config import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_HELD: "weakref.WeakSet[RunLock]" = weakref.WeakSet()  # the locks this process holds now


def _drop_in_child() -> None:
    """A forked child (a DataLoader worker) shares the lock's open file; should the parent be
    killed with ``kill -9``, the child would hold the flock until it noticed, and the next run
    would be refused. The child points its copy of each held lock's descriptor at /dev/null
    instead (it must not unlock: that would unlock the parent too). Only locks still held: a
    lock dropped without ``release`` has closed its file, and its descriptor's number may belong
    to anything by now (a worker's queue)."""
    files = [lock.file for lock in list(_HELD) if lock.file is not None and not lock.file.closed]
    if not files:
        return
    null = os.open(os.devnull, os.O_RDWR)
    for f in files:
        os.dup2(null, f.fileno())
    os.close(null)


os.register_at_fork(after_in_child=_drop_in_child)


class RunLocked(ConfigError):
    """Another process is writing this run directory."""


def check_writable(*dirs: Path) -> None:
    """Create each folder and a file in it, so that a read-only or foreign run directory is
    refused at start-up rather than at the first checkpoint."""
    for d in dirs:
        probe = d / f".write-test{os.getpid()}"
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"run.out_dir: cannot write to {d} ({err.strerror or err}); fix its permissions "
                              "or choose another run.out_dir") from None


class RunLock:
    """Held by the process that trains in ``run_dir`` (rank 0 under torchrun); readers such as
    ``iwm eval`` never take it."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.file = None

    def acquire(self) -> "RunLock":
        """Take the lock (a no-op if this object holds it); raise :class:`RunLocked` naming the
        holder if another process has it."""
        if self.file is not None:
            return self
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read()
            f.close()
            raise RunLocked(f"{self.path.parent} is in use by another iwm process ({describe(holder)}); wait "
                            "for it to end, stop it, or choose another run.out_dir") from None
        except OSError as err:  # e.g. a network filesystem mounted without lock support: run, but say so
            log.warning("cannot lock %s (%s): nothing stops a second run from writing this directory",
                        self.path, err.strerror)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}) + "\n")
        f.flush()
        self.file = f
        _HELD.add(self)
        return self

    def release(self) -> None:
        if self.file is not None:
            _HELD.discard(self)
            self.file.close()  # closing the descriptor drops the flock
            self.file = None


def describe(holder: str) -> str:
    """The lock file's record as ``pid 123 on host gpu01, started ...``."""
    try:
        h = json.loads(holder)
        return f"pid {h['pid']} on host {h['host']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def hold(run_dir: Path, *more: Path) -> RunLock:
    """Check that ``run_dir`` (and ``more`` folders in it) can be written, then lock it."""
    check_writable(run_dir, *more)
    return RunLock(run_dir).acquire()
