"""Faults provoked on purpose: kills, preemption signals, non-finite steps, broken images."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from iwm import config
from iwm.checkpoint import load_checkpoint
from iwm.data import ImageFolder
from iwm.train import PREEMPTED_EXIT_CODE, NonFiniteError, Trainer


def _cli(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "iwm.cli", "pretrain", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]  # health rows are kind "health"


def _wait_for(pred, proc, timeout=120):
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, tiny_overrides):
    base = [o for o in tiny_overrides if not o.startswith("run.out_dir")]
    base += ["optim.max_steps=60", "run.ckpt_every=5", "data.synthetic_size=40"]
    straight = tmp_path / "straight"
    assert _cli(base + [f"run.out_dir={straight}"]).wait() == 0

    killed = tmp_path / "killed"
    proc = _cli(base + [f"run.out_dir={killed}"])
    ckpt = killed / "checkpoints" / "step-00000015.pt"
    _wait_for(ckpt.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_losses(killed))
    assert done < 60, "the run finished before it was killed; the test proves nothing"
    assert _cli(base + [f"run.out_dir={killed}"]).wait() == 0
    assert _losses(killed) == _losses(straight)  # same floats, bit for bit, one record per step
    a = load_checkpoint(straight / "checkpoints" / "latest.pt")
    b = load_checkpoint(killed / "checkpoints" / "latest.pt")
    for part in ("encoder", "predictor", "target_encoder"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_sigterm_checkpoints_and_exits_with_distinct_status(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    proc = _cli([*tiny_overrides, "optim.max_steps=100000", "run.ckpt_every=100000"])
    _wait_for(lambda: (run / "metrics.jsonl").is_file() and len(_losses(run)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == PREEMPTED_EXIT_CODE
    assert "resume" in proc.stderr.read()
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["step"] == len(_losses(run)) >= 3  # the step in flight finished and was saved
    t = Trainer(config.from_dict(None, tiny_overrides + ["optim.max_steps=100000"]))
    assert t.maybe_resume() and t.step == state["step"]


def _nan_at(trainer, bad_calls):
    """The training forward passes numbered in ``bad_calls`` (from 1) return NaN. Count only those:
    run the trainer with eval.every=0 (the health checks call the same forward)."""
    assert trainer.health is None, "set eval.every=0: health checks would shift the count"
    forward, calls = trainer.model.forward, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = forward(*args, **kwargs)
        return loss * float("nan") if calls["n"] in bad_calls else loss

    trainer.model.forward = flaky


def test_nonfinite_steps_are_skipped(tiny_overrides):
    quiet = tiny_overrides + ["eval.every=0"]
    t = Trainer(config.from_dict(None, quiet + ["optim.max_steps=1"]))
    assert t.fused  # the path GPUs take: the fused kernel skips on a found_inf tensor, no host sync
    before = {k: v.clone() for k, v in t.model.encoder.state_dict().items()}
    _nan_at(t, {1})
    t.fit()
    after = t.model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the bad step changed nothing
    assert int(t.skipped) == 1

    t = Trainer(config.from_dict(None, quiet + ["optim.max_steps=6", "run.out_dir=" + str(t.run_dir.parent / "b")]))
    _nan_at(t, {2, 3})
    res = t.fit()
    assert res.steps == 6 and int(t.skipped) == 2
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_persistent_nonfinite_stops_with_clear_message_and_sound_checkpoint(tiny_overrides):
    t = Trainer(config.from_dict(None, tiny_overrides + ["optim.max_steps=20", "run.max_skips=3", "eval.every=0"]))
    _nan_at(t, set(range(3, 100)))
    with pytest.raises(NonFiniteError, match="run.max_skips"):
        t.fit()
    state = load_checkpoint(t.ckpt_dir / "latest.pt")
    assert all(torch.isfinite(v).all() for v in state["encoder"].values())
    assert state["step"] < 20


def _hostile_folder(root):
    root.mkdir()
    rgb = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(root / "good.jpg")
    data = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("this is not an image")
    Image.fromarray(rgb[..., 0]).save(root / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(root / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(root / "palette.gif")
    Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).save(root / "sixteen.png")
    Image.fromarray(rgb[:2, :3]).save(root / "tiny.png")
    Image.fromarray(np.tile(rgb, (40, 40, 1))).save(root / "huge.jpg")  # 1920 x 2560
    return root


def test_hostile_images_are_converted_or_skipped(tmp_path, caplog):
    ds = ImageFolder(_hostile_folder(tmp_path / "imgs"), size=16, seed=0)
    with caplog.at_level(logging.WARNING):
        views = [ds[i][0] for i in range(len(ds))]
    assert all(v.shape == (3, 16, 16) and v.dtype == torch.uint8 for v in views)
    assert {p.name for p in ds.skipped} == {"truncated.jpg", "empty.jpg", "notes.png"}
    for name in ("truncated.jpg", "empty.jpg", "notes.png"):
        assert name in caplog.text
    sixteen = ds.files.index(tmp_path / "imgs" / "sixteen.png")
    from iwm.data.folders import read_rgb

    img = read_rgb(ds.files[sixteen])
    assert 0 < img.float().mean() < 250  # scaled to 8 bits, not clipped white


def test_training_survives_hostile_images(tmp_path, tiny_overrides):
    root = _hostile_folder(tmp_path / "imgs")
    cfg = config.from_dict(None, tiny_overrides + ["data.dataset=folder", f"data.path={root}", "data.batch_size=4",
                                                   "optim.max_steps=4"])
    assert Trainer(cfg).fit().steps == 4


def test_missing_or_empty_data_is_a_clear_error(tmp_path, tiny_overrides):
    (tmp_path / "empty").mkdir()
    for path, msg in ((tmp_path / "nope", "not a directory"), (tmp_path / "empty", "no images")):
        cfg = config.from_dict(None, tiny_overrides + ["data.dataset=folder", f"data.path={path}"])
        with pytest.raises(FileNotFoundError, match=msg):
            Trainer(cfg)


def _poll(pred, proc):
    """Wait for ``pred`` while the run lives (no time limit: the run's own end is the bound)."""
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)


def _said(stderr):
    """The lines iwm wrote itself (log lines carry a time stamp and a level)."""
    return [line for line in stderr.splitlines() if line.startswith("iwm:")]


def _health_steps(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["kind"] == "health"]


def test_runs_killed_before_their_first_checkpoint_leave_one_step0_health_record(tiny_overrides):
    cfg = config.from_dict(None, tiny_overrides + ["optim.max_steps=3"])
    for _ in range(3):  # each try measures step 0, then dies in its first step: no checkpoint yet
        t = Trainer(cfg)
        t.train_step = lambda crops: (_ for _ in ()).throw(RuntimeError("killed"))
        with pytest.raises(RuntimeError, match="killed"):
            t.fit()
    assert not (t.ckpt_dir / "latest.pt").exists() and _health_steps(t.run_dir) == [0]
    Trainer(cfg).fit()
    assert _health_steps(t.run_dir) == [0, 3]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_to_the_process_group_of_a_run_with_workers_checkpoints_and_resumes(tmp_path, tiny_overrides,
                                                                                        sig):
    # SLURM, `timeout`, container runtimes (SIGTERM) and a terminal's Ctrl-C (SIGINT) signal the
    # whole process group: the DataLoader workers get it too
    run = tmp_path / "run"
    args = [*tiny_overrides, "data.num_workers=2", "run.ckpt_every=100000"]
    proc = _cli([*args, "optim.max_steps=100000"], start_new_session=True)
    _poll(lambda: (run / "metrics.jsonl").is_file() and len(_losses(run)) >= 3, proc)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate()
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    assert "Traceback" not in err and len(_said(err)) == 1
    assert f"stopped by signal {sig.name} after step" in _said(err)[0]
    step = load_checkpoint(run / "checkpoints" / "latest.pt")["step"]
    assert step == len(_losses(run)) >= 3  # the step in flight finished and was saved

    resumed = _cli([*args, f"optim.max_steps={step + 2}"])
    _, err = resumed.communicate()
    assert resumed.returncode == 0, err[-2000:]
    assert f"resuming run in {run}" in err
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, step + 3))


# Runs `iwm pretrain` with one start-up stage held until the test signals: a deterministic way to
# be in start-up when the signal comes. The stage prints a line, then waits on stdin.
_HELD_START_UP = """
import sys
import iwm.eval.health, iwm.train.build

def held(*args, **kwargs):
    print("held in start-up", file=sys.stderr, flush=True)
    sys.stdin.readline()
    raise AssertionError("the signal did not stop the start-up")

if sys.argv[1] == "data":
    iwm.train.build.build_dataset = held  # decoding the training data (build_data looks it up there)
else:
    iwm.eval.health.HealthMonitor.__call__ = held  # the step-0 health check
from iwm.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("stage,sig", [("data", signal.SIGTERM), ("health", signal.SIGTERM),
                                       ("health", signal.SIGINT)])
def test_stop_signal_during_start_up_exits_with_one_line(tmp_path, tiny_overrides, stage, sig):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _HELD_START_UP, stage, "pretrain", *tiny_overrides,
                             "optim.max_steps=5"], env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    while "held in start-up" not in (line := proc.stderr.readline()):
        assert line, f"run ended early: {''.join(seen)[-2000:]}"
        seen.append(line)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate()
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    assert "Traceback" not in err and len(_said(err)) == 1
    assert f"stopped by signal {sig.name} during start-up" in _said(err)[0]
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


# Runs `iwm pretrain` on an image folder whose reads stall after argv[1] images, as on a hung NFS
# mount: each later read says so on stderr, then never returns.
_STALLING_READS = """
import sys, time
import iwm.data.datasets as datasets

read, done = datasets.read_rgb, [0]

def stalling(*args, **kwargs):
    done[0] += 1
    if done[0] > int(sys.argv[1]):
        print("read stalled", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    return read(*args, **kwargs)

datasets.read_rgb = stalling
from iwm.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _image_folder(root, n=32):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / f"{i:02d}.png")
    return root


def _session(sid):
    """The processes still alive in session ``sid`` (a run started with start_new_session)."""
    alive = []
    for stat in os.listdir("/proc"):
        try:
            fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: the session id
            alive.append(int(stat))
    return alive


def _wait_for_line(proc, text):
    seen = []
    while text not in (line := proc.stderr.readline()):
        assert line, f"run ended early: {''.join(seen)[-2000:]}"
        seen.append(line)


@pytest.mark.parametrize("workers", [0, 1])
def test_stop_signal_while_a_read_stalls_saves_the_last_step_and_leaves_no_worker(tmp_path, tiny_overrides, workers):
    # 2 batches of 8 read, then every read hangs: the loop waits for batch 3 after step 2
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [*tiny_overrides, "data.dataset=folder", f"data.path={_image_folder(tmp_path / 'imgs')}",
            f"data.num_workers={workers}", "eval.every=0", "optim.max_steps=100", "run.ckpt_every=100"]
    proc = subprocess.Popen([sys.executable, "-c", _STALLING_READS, "16", "pretrain", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_line(proc, "read stalled")
        _poll(lambda: (run / "metrics.jsonl").is_file() and len(_losses(run)) == 2, proc)
        err = _signal_group(proc, signal.SIGTERM)
    finally:
        _end(proc)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    assert "Traceback" not in err and _said(err) == [
        "iwm: stopped by signal SIGTERM after step 2; checkpoint written, run the same command to resume"]
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2
    assert _session(proc.pid) == []  # the worker stuck in its read was ended too


def _signal_group(proc: subprocess.Popen, *signals: int) -> str:
    """Send the signals to the run's process group, then its stderr once it exits."""
    for sig in signals:
        os.killpg(proc.pid, sig)
    return proc.communicate(timeout=120)[1]  # a guard against a hang, not a bound


def _end(proc: subprocess.Popen) -> None:
    """Whatever happened, leave no process of the run behind."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


_HELD_STEP = """
import sys, time
import iwm.train.loop, iwm.train.signals

iwm.train.signals.REPEAT_GRACE_S = 0  # the test's two signals come at once: the second is not a repeat
step = iwm.train.loop.Trainer.train_step

def held(self, crops):
    loss = step(self, crops)
    if self.step == 3:
        print("held in step 3", file=sys.stderr, flush=True)
        while True:  # short sleeps: a signal the kernel gave another thread is handled at the next one
            time.sleep(0.05)
    return loss

iwm.train.loop.Trainer.train_step = held
from iwm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_stop_signal_ends_a_step_that_does_not_finish(tmp_path, tiny_overrides):
    # a step that hangs (a stuck collective, a slow save) holds the first signal; Ctrl-C again ends it
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _HELD_STEP, "pretrain", *tiny_overrides, "eval.every=0",
                             "optim.max_steps=100", "run.ckpt_every=2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_line(proc, "held in step 3")
        err = _signal_group(proc, signal.SIGTERM, signal.SIGINT)
    finally:
        _end(proc)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    assert "Traceback" not in err and len(_said(err)) == 1
    line = _said(err)[0]
    assert "stopped at once by a second signal" in line and "without saving the step in flight" in line
    assert f"{run / 'checkpoints' / 'step-00000002.pt'} (step 2) is intact" in line
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2


def test_weights_that_overflow_are_never_checkpointed(tmp_path):
    # the run: every loss and gradient finite, but lr=1e39 makes the first update infinite
    run = tmp_path / "run"
    args = ["--config", "cifar10_equi", "data.dataset=synthetic", "data.synthetic_size=64", "data.batch_size=16",
            "eval.knn=false", "run.progress=false", "eval.every=0", "optim.max_steps=30", "optim.lr=1e39",
            "run.ckpt_every=5", "run.log_every=5", "run.max_skips=3", "data.num_workers=0", f"run.out_dir={run}"]
    proc = _cli(args)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 3, err[-2000:]
    assert "Traceback" not in err and len(_said(err)) == 1
    assert "hold NaN or infinite values, so they were not saved" in _said(err)[0]
    assert "no checkpoint of this run had been written yet" in _said(err)[0]
    assert not list((run / "checkpoints").glob("*.pt"))
    # as the message says: run again with a lower lr, which starts afresh
    again = _cli([a for a in args if not a.startswith(("optim.lr", "optim.max_steps"))] + ["optim.max_steps=5"])
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]


def test_a_checkpoint_named_after_an_overflow_is_finite_and_resumes(tiny_overrides):
    t = Trainer(config.from_dict(None, tiny_overrides + ["optim.max_steps=20", "run.ckpt_every=2", "eval.every=0"]))
    step = t.train_step

    def overflow_at_3(crops):  # step 3 leaves an infinite weight behind, with a finite loss
        loss = step(crops)
        if t.step == 3:
            with torch.no_grad():
                next(t.model.encoder.parameters()).view(-1)[0] = float("inf")
        return loss

    t.train_step = overflow_at_3
    with pytest.raises(NonFiniteError, match=r"step-00000002.pt \(step 2\) is intact"):
        t.fit()
    for path in t.ckpt_dir.glob("*.pt"):
        state = load_checkpoint(path)
        assert state["step"] == 2
        assert all(torch.isfinite(v).all() for part in ("encoder", "predictor", "target_encoder")
                   for v in state[part].values())
    resumed = Trainer(config.from_dict(None, tiny_overrides + ["optim.max_steps=4", "eval.every=0"]))
    assert resumed.fit().steps == 4
