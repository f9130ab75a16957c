"""Faults of the run directory provoked on purpose: a second writer, a writer killed with
SIGKILL, damaged checkpoints, a full disk, a directory that cannot be written."""

import builtins
import errno
import json
import logging
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from iwm import config, files
from iwm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from iwm.cli import main
from iwm.config import ConfigError
from iwm.runlock import RunLock, RunLocked
from iwm.train import PREEMPTED_EXIT_CODE, Trainer, plot_losses

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(__file__).parents[1] / "src" / "iwm"


def _cfg(tiny_overrides, *extra):
    return config.from_dict(None, [*tiny_overrides, *extra])


def _trained(tiny_overrides, steps, *extra) -> Path:
    cfg = _cfg(tiny_overrides, f"optim.max_steps={steps}", *extra)
    Trainer(cfg).fit()
    return Path(cfg.run.out_dir)


def _steps(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r.get("kind", "train") == "train"]  # not the health rows


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the middle of the file is tensor data: torch.load alone would not notice
    path.write_bytes(bytes(data))


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iwm: error: ") and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------------------------
# one writer per run directory


def test_second_writer_is_refused_naming_the_holder_and_readers_keep_working(tiny_overrides, tmp_path, capsys):
    run = _trained(tiny_overrides, 2)
    args = [*tiny_overrides, "optim.max_steps=100000", "run.ckpt_every=1"]  # a checkpoint every step
    trainer = subprocess.Popen([sys.executable, "-m", "iwm.cli", "pretrain", *args], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while (run / "metrics.jsonl").read_text().count("\n") < 5:  # resumed, and training
            assert trainer.poll() is None, trainer.stderr.read()[-2000:]
            time.sleep(0.05)
        holder = rf"pid {trainer.pid} on host {re.escape(socket.gethostname())}, started \d{{4}}-\d\d-\d\d"
        with pytest.raises(RunLocked, match=holder):
            Trainer(_cfg(tiny_overrides, "optim.max_steps=100000"))
        assert main(["pretrain", *args]) == 2
        assert re.search(holder, _one_line_error(capsys.readouterr().err))

        # readers take no lock, and a checkpoint being replaced under them is never half-seen
        small = ["--train-size", "32", "--test-size", "16", "--batch-size", "16", "--epochs", "1"]
        for argv in (["eval", "mrr", str(run), "--images", "1", "--bank", "4", "--no-progress"],
                     ["viz", "retrieval", str(run), "--images", "1", "--bank", "4", "--neighbours", "2"],
                     ["leverage", "probe", str(run), "--kind", "knn", "--device", "cpu", "--no-progress", *small],
                     ["export", str(run), str(tmp_path / "w")]):
            assert main(argv) == 0, capsys.readouterr().err
        assert trainer.poll() is None  # still training all along
    finally:
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(timeout=300) == PREEMPTED_EXIT_CODE


def _hold_forever(run_dir, ready):
    lock = RunLock(run_dir).acquire()  # noqa: F841 (held until the process dies)
    ready.set()
    time.sleep(600)


def test_lock_of_a_writer_killed_with_sigkill_does_not_block(tiny_overrides):
    run = Path(_cfg(tiny_overrides).run.out_dir)
    run.mkdir()
    ready = multiprocessing.get_context("fork").Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold_forever, args=(run, ready))
    holder.start()
    try:
        assert ready.wait(timeout=600)
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            Trainer(_cfg(tiny_overrides, "optim.max_steps=2"))
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    assert Trainer(_cfg(tiny_overrides, "optim.max_steps=2")).fit().steps == 2


# ----------------------------------------------------------------------------------------------
# damaged checkpoints


def test_damaged_checkpoints_are_skipped_for_the_newest_sound_one(tiny_overrides, caplog):
    run = _trained(tiny_overrides, 4, "run.ckpt_every=2")
    ckpt = run / "checkpoints"
    latest, step4, step2 = ckpt / "latest.pt", ckpt / "step-00000004.pt", ckpt / "step-00000002.pt"
    assert not os.path.samefile(latest, step4)  # a copy, not a link: damage to one is not damage to both
    _truncate(latest)
    _flip_byte(step4)
    (ckpt / ".latest.tmp999.pt").write_bytes(b"partial")  # left by a writer killed mid-write

    t = Trainer(_cfg(tiny_overrides, "optim.max_steps=6", "run.ckpt_every=2"))
    with caplog.at_level(logging.WARNING, logger="iwm.checkpoint"):
        assert t.maybe_resume() and t.step == 2
    assert re.search(r"skipping checkpoint .*latest\.pt: truncated: [\d,]+ bytes of [\d,]+", caplog.text)
    assert re.search(r"skipping checkpoint .*step-00000004\.pt: damaged: its sha256 differs", caplog.text)
    assert re.search(r"resuming from .*step-00000002\.pt \(step 2\)", caplog.text)
    assert not (ckpt / ".latest.tmp999.pt").exists()
    assert t.fit().steps == 6
    assert _steps(run) == [1, 2, 3, 4, 5, 6]  # the steps redone are logged once
    assert load_checkpoint(latest)["step"] == 6 and load_checkpoint(step2)["step"] == 2


def test_readers_never_see_a_checkpoint_without_its_record(tmp_path, monkeypatch):
    save_checkpoint({"step": 1, "w": torch.ones(8)}, tmp_path, 1, keep=2, periodic=False)
    replace, seen = os.replace, []

    def read_around(src, dst):  # a reader just before and just after each rename of the writer
        seen.append(load_checkpoint(tmp_path / "latest.pt")["step"])
        replace(src, dst)
        seen.append(load_checkpoint(tmp_path / "latest.pt")["step"])

    monkeypatch.setattr(os, "replace", read_around)
    save_checkpoint({"step": 2, "w": torch.zeros(8)}, tmp_path, 2, keep=2, periodic=True)
    assert seen[0] == 1 and seen[-1] == 2

    def killed(src, dst):  # the writer dies after the record, before the checkpoint's rename
        if not str(dst).endswith(".json"):
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 3, "w": torch.ones(8)}, tmp_path, 3, keep=2, periodic=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "latest.pt")["step"] == 2  # the file in place is still sound


def test_a_flipped_byte_is_caught_by_the_checksum(tiny_overrides):
    run = _trained(tiny_overrides, 2)
    latest = run / "checkpoints" / "latest.pt"
    _flip_byte(latest)
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_checkpoint(latest)
    t = Trainer(_cfg(tiny_overrides, "optim.max_steps=2"))
    assert t.maybe_resume() and t.step == 2  # from step-00000002.pt, a sound copy


def test_checkpoints_without_checksums_are_judged_by_loading(tiny_overrides, caplog):
    run = _trained(tiny_overrides, 4, "run.ckpt_every=2")
    ckpt = run / "checkpoints"
    for side in ckpt.glob("*.json"):  # as a run from before checksums
        side.unlink()
    _truncate(ckpt / "latest.pt")
    t = Trainer(_cfg(tiny_overrides, "optim.max_steps=4"))
    with caplog.at_level(logging.WARNING, logger="iwm.checkpoint"):
        assert t.maybe_resume() and t.step == 4
    assert "latest.pt" in caplog.text


def _flip_in_tensor(path, tensor):
    """Flip one byte inside ``tensor``'s storage in the saved file (found by its bytes)."""
    data, raw = bytearray(path.read_bytes()), tensor.numpy().tobytes()
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) < 0
    data[at + len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_optimizer_tensor_is_caught_when_the_checksum_files_are_lost(tiny_overrides, caplog):
    run = _trained(tiny_overrides, 4, "run.ckpt_every=2")
    ckpt = run / "checkpoints"
    for side in ckpt.glob("*.json"):
        side.unlink()
    latest = ckpt / "latest.pt"
    moments = load_checkpoint(latest)["optimizer"]["state"].values()
    _flip_in_tensor(latest, max((m["exp_avg_sq"] for m in moments), key=torch.Tensor.numel))
    t = Trainer(_cfg(tiny_overrides, "optim.max_steps=4", "run.ckpt_every=2"))
    with caplog.at_level(logging.WARNING, logger="iwm.checkpoint"):
        assert t.maybe_resume() and t.step == 4
    assert re.search(r"skipping checkpoint .*latest\.pt: damaged: its sha256 differs from the one it carries",
                     caplog.text)
    assert re.search(r"resuming from .*step-00000004\.pt \(step 4\)", caplog.text)


def test_readers_of_a_run_take_the_newest_sound_checkpoint_when_latest_is_damaged(tiny_overrides, tmp_path,
                                                                                  caplog, capsys):
    import iwm

    run = _trained(tiny_overrides, 4, "run.ckpt_every=2")
    ckpt = run / "checkpoints"
    latest, step4 = ckpt / "latest.pt", ckpt / "step-00000004.pt"
    _flip_byte(latest)
    with caplog.at_level(logging.WARNING, logger="iwm.checkpoint"):
        loaded = iwm.load(run)
    assert loaded.step == 4 and loaded.path == step4
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "\n" not in warned[0], warned
    assert re.search(r"latest\.pt \(damaged: its sha256 differs.*reading step-00000004\.pt \(step 4\)", warned[0])
    assert main(["export", str(run), str(tmp_path / "w")]) == 0  # every reader, as iwm.load
    # a damaged file named explicitly is refused, in one line
    capsys.readouterr()
    assert main(["export", str(latest), str(tmp_path / "w2")]) == 2
    assert re.search(r"cannot load checkpoint .*latest\.pt: damaged", _one_line_error(capsys.readouterr().err))
    _flip_byte(step4)
    _flip_byte(ckpt / "step-00000002.pt")
    with pytest.raises(CheckpointError, match=r"no sound checkpoint in .*latest\.pt \(damaged.*step-00000002"):
        iwm.load(run)


def test_no_sound_checkpoint_is_a_one_line_error(tiny_overrides, capsys):
    run = _trained(tiny_overrides, 2)
    for p in (run / "checkpoints").glob("*.pt"):
        _truncate(p)
    assert main(["pretrain", f"run.out_dir={run}"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "no sound checkpoint in" in line
    assert re.search(r"latest\.pt \(truncated.*step-00000002\.pt \(truncated", line)


# ----------------------------------------------------------------------------------------------
# a full disk, simulated at the write call: files opened for writing by iwm.files take bytes
# until the disk is full, write what fits, then fail with ENOSPC, as a full disk does


class _Disk:
    def __init__(self, free: int):
        self.free = free

    def open(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return _FillingFile(f, self) if "w" in mode else f


class _FillingFile:
    def __init__(self, f, disk):
        self.f, self.disk = f, disk

    def write(self, data):
        data = memoryview(data).cast("B")
        if len(data) > self.disk.free:
            self.f.write(data[: self.disk.free])
            self.disk.free = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.disk.free -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch):
    def fill(free: int) -> _Disk:
        disk = _Disk(free)
        monkeypatch.setattr(files, "open", disk.open, raising=False)
        return disk
    return fill


def _temporaries(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("room, intact", [(0.5, r"step-00000002\.pt \(step 2\)"),  # latest.pt does not fit
                                          (1.5, r"latest\.pt \(step 4\)")])  # its periodic copy does not
def test_full_disk_during_a_checkpoint_says_what_it_needed_and_what_is_intact(tiny_overrides, full_disk, capsys,
                                                                            room, intact):
    run = _trained(tiny_overrides, 2)
    ckpt = run / "checkpoints"
    size = (ckpt / "latest.pt").stat().st_size
    full_disk(int(room * size))
    assert main(["pretrain", f"run.out_dir={run}", "optim.max_steps=4"]) == files.DISK_FULL_EXIT_CODE == 4
    line = _one_line_error(capsys.readouterr().err)
    assert re.search(r"no space left on device writing .*\.pt \(it needs about [\d.]+ kB, [\d,.]+ [kMG]B free\); "
                     r"the partial file was removed; .*" + intact + " is intact$", line)
    assert _temporaries(ckpt) == [] and _temporaries(run) == []
    step = int(re.search(r"\(step (\d)\)", line).group(1))
    assert load_checkpoint(ckpt / "latest.pt")["step"] == step  # verified against its checksum


def test_full_disk_leaves_export_eval_json_and_figures_unchanged(tiny_overrides, full_disk, tmp_path, capsys):
    run = _trained(tiny_overrides, 2)
    out = tmp_path / "out"
    (out / "w").mkdir(parents=True)
    kept = ("w/target_encoder.safetensors", "mrr.json", "loss.png")  # the export folder's first file
    for name in kept:
        (out / name).write_bytes(b"the previous file")
    full_disk(100)
    assert main(["export", str(run), str(out / "w")]) == 4
    assert "target_encoder.safetensors is unchanged" in _one_line_error(capsys.readouterr().err)
    argv = ["eval", "mrr", str(run), "--images", "1", "--bank", "4", "--no-progress", "--out", str(out / "mrr.json")]
    assert main(argv) == 4
    assert "mrr.json is unchanged" in _one_line_error(capsys.readouterr().err)
    full_disk(100)
    with pytest.raises(files.DiskFullError, match=r"needs more than the 100 bytes written"):
        plot_losses([(1, 1.0), (2, 0.5)], out / "loss.png")
    assert all((out / n).read_bytes() == b"the previous file" for n in kept)
    assert _temporaries(out) == [] and _temporaries(out / "w") == []


def test_every_writer_writes_through_the_safe_helper():
    direct = re.compile(r"(?<!files)\.write_(text|bytes)\(|\.savefig\(|json\.dump\(|torch\.save\(|save_file\(")
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.name != "files.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if direct.search(line) and "lambda f:" not in line]  # f: the helper's temporary file
    assert offenders == [], "write these through iwm.files (atomic, and clear on a full disk)"


# ----------------------------------------------------------------------------------------------
# a run directory that cannot be written


def test_run_directory_that_cannot_be_written_is_refused_at_start(tiny_overrides, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    blocked = [o for o in tiny_overrides if not o.startswith("run.out_dir")] + [f"run.out_dir={tmp_path}/a-file/run"]
    with pytest.raises(ConfigError, match=r"run.out_dir: cannot write to .*a-file/run"):
        Trainer(config.from_dict(None, blocked))
    assert main(["pretrain", *blocked]) == 2
    assert "cannot write to" in _one_line_error(capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_checkpoint_folder_is_refused_at_start(tiny_overrides):
    run = _trained(tiny_overrides, 1)
    ckpt = run / "checkpoints"
    ckpt.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match=r"cannot write to .*checkpoints \(Permission denied\)"):
            Trainer(_cfg(tiny_overrides, "optim.max_steps=2"))
    finally:
        ckpt.chmod(0o755)


def test_a_lock_dropped_without_release_leaves_a_forked_child_its_files(tmp_path):
    """A lock let go of by garbage collection (a Trainer built and dropped, never fitted) has closed
    its descriptor, whose number the next open file may take: a worker forked later must still
    read that file, not /dev/null."""
    import gc

    lock = RunLock(tmp_path).acquire()
    number = lock.file.fileno()
    del lock
    gc.collect()
    read, write = os.pipe()
    if read != number:  # the lock's old number now reads a pipe, as a loader worker's queue would
        os.dup2(read, number)
        os.close(read)
    child = os.fork()
    if child == 0:  # the worker: exit 0 only if it reads what the parent sends
        try:
            os._exit(0 if os.read(number, 5) == b"index" else 1)
        finally:
            os._exit(2)
    os.write(write, b"index")
    _, status = os.waitpid(child, 0)
    os.close(write)
    os.close(number)
    assert os.waitstatus_to_exitcode(status) == 0
