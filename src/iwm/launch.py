"""``python -m iwm.launch``: torchrun, exiting with its workers' own status (75 after a stop).

torchrun exits 1 whenever it stops, whatever its workers said: after a stop signal (with a
``SignalException`` traceback) as after a crash, so a scheduler cannot requeue a preempted run by
its exit status. This wrapper takes torchrun's arguments, runs it, passes the stop signals on to
it, and exits with the status its workers reported where they all agree (else torchrun's)::

    python -m iwm.launch --nproc_per_node=8 -m iwm.cli pretrain --config imagenet_vitb16
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .files import write_text
from .train.signals import PREEMPTED_EXIT_CODE, STOP_SIGNALS

STATUS_DIR = "IWM_LAUNCH_STATUS_DIR"  # where each worker leaves its exit status for the launcher
# torchrun forwards only the signals it handles; the default list lacks SIGUSR1 (SLURM's --signal),
# which would kill torchrun and leave the workers training
HANDLED = "--signals_to_handle=SIGTERM,SIGINT,SIGUSR1,SIGHUP,SIGQUIT"


def report(status: int) -> None:
    """Under the launcher, leave this process's exit status where the launcher reads it."""
    folder = os.environ.get(STATUS_DIR)
    if folder and Path(folder).is_dir():
        write_text(Path(folder, f"rank-{os.environ.get('RANK', '0')}"), f"{status}\n")


def launcher_status(torchrun: int, workers: set[int]) -> int:
    """The status to exit with: torchrun's when it succeeded or the workers disagree (or said
    nothing: killed, or crashed with a traceback), else the one status they all reported."""
    code = torchrun if torchrun >= 0 else 128 - torchrun  # killed by a signal: the shell's 128 + N
    if code == 0 or len(workers) != 1:
        return code
    return next(iter(workers)) or code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not any(a.startswith(("--signals_to_handle", "--signals-to-handle")) for a in args):
        args = [HANDLED, *args]
    torchrun: subprocess.Popen | None = None
    early: list[int] = []  # signals that came before torchrun could be told

    def forward(signum: int, frame: object) -> None:
        if torchrun is None:
            early.append(signum)
        else:
            torchrun.send_signal(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    with tempfile.TemporaryDirectory(prefix="iwm-launch-") as folder:
        # torchrun in a session of its own: a signal to this process's group (a terminal's Ctrl-C,
        # `timeout`) then reaches it once, passed on from here, as one sent to this process alone
        # (a container's stop) does; torchrun passes it to its workers, which checkpoint and exit 75
        torchrun = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args],
                                    env={**os.environ, STATUS_DIR: folder}, start_new_session=True)
        for signum in early:
            torchrun.send_signal(signum)
        code = torchrun.wait()
        workers = {int(p.read_text()) for p in Path(folder).glob("rank-*")}
    if -code in STOP_SIGNALS:  # a stop that came before torchrun handled signals: nothing had started
        return PREEMPTED_EXIT_CODE
    return launcher_status(code, workers)


if __name__ == "__main__":
    sys.exit(main())
