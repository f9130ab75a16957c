"""Two processes under torchrun (gloo, CPU) train like one process with the same global batch,
replicated (DDP) or sharded (FSDP), with crops from the loader or the device, and a sharded
run's checkpoint resumes in one process."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]  # health rows are kind "health"


def _health(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "health"]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

# trains the run of the overrides given to step argv[1], then stops (a preempted job, in short)
PARTIAL = """
import logging
import sys
from iwm import config
from iwm.cli import _leave_distributed, _setup_distributed
from iwm.train import Trainer
logging.basicConfig(level=logging.INFO)
cfg = config.load(None, sys.argv[2:])
_setup_distributed(cfg)
Trainer(cfg).fit(until=int(sys.argv[1]))
_leave_distributed(finished=True)
"""


def _base(tiny_overrides):
    base = [o for o in tiny_overrides if not o.startswith(("run.out_dir", "data.batch_size"))]
    return base + ["optim.max_steps=6", "data.synthetic_size=64"]


def _one_process(base, out):
    one = subprocess.run([sys.executable, "-m", "iwm.cli", "pretrain", *base, "data.batch_size=8",
                          f"run.out_dir={out}"], env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    return _losses(out)


def _torchrun(*args):
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *args],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    return two.stderr


# SIGReg's statistic is the global batch's: its sums are all-reduced, with their gradient
SIGREG = ("optim.target=online", "optim.regularizer=sigreg", "optim.reg_embeddings=tokens", "optim.reg_weight=0.5")


@needs_gloo
@pytest.mark.parametrize("parallel,accum,on_device,extra", [
    ("ddp", 1, False, ()), ("fsdp", 2, False, ()),  # FSDP with accumulation
    ("ddp", 1, True, ()),  # crops cut on the device
    ("ddp", 1, False, SIGREG)], ids=["ddp", "fsdp-accum", "ddp-on-device", "ddp-sigreg"])
def test_two_processes_match_one(tmp_path, tiny_overrides, parallel, accum, on_device, extra):
    base = _base(tiny_overrides) + [f"data.on_device={str(on_device).lower()}", *extra]
    a = _one_process(base, tmp_path / "one")
    log = _torchrun("-m", "iwm.cli", "pretrain", *base, "data.batch_size=4", f"run.parallel={parallel}",
                    f"optim.accum_steps={accum}", f"run.out_dir={tmp_path / 'two'}")
    assert f"{parallel.upper()} over 2 processes" in log
    b = _losses(tmp_path / "two")
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert a[0] != a[-1]
    # the health checks (at the first and the last step) read the same on the spread model
    ha, hb = _health(tmp_path / "one"), _health(tmp_path / "two")
    assert [r["step"] for r in ha] == [r["step"] for r in hb] == [0, 6]
    for key in ("knn_top1", "feature_std", "effective_rank", "loss_all", "mrr"):
        assert [r[key] for r in hb] == pytest.approx([r[key] for r in ha], rel=1e-3), key


@needs_gloo
def test_sharded_checkpoint_resumes_in_one_process(tmp_path, tiny_overrides):
    base = _base(tiny_overrides)
    whole = _one_process(base, tmp_path / "one")
    script = tmp_path / "partial.py"
    script.write_text(PARTIAL)
    run = tmp_path / "fsdp_then_one"
    log = _torchrun(str(script), "3", *base, "data.batch_size=4", "run.parallel=fsdp", f"run.out_dir={run}")
    assert "FSDP over 2 processes" in log
    assert len(_losses(run)) == 3
    # the full (gathered) weights and optimizer state: one process, no FSDP, picks up at step 3
    resumed = _one_process(base, run)
    assert resumed == pytest.approx(whole, rel=1e-4, abs=1e-6)


@needs_gloo
def test_leaving_closes_the_process_group(tmp_path):
    """`iwm pretrain` under torchrun closes its group at the end (waiting for the others first),
    instead of leaving gloo's connections to the interpreter's exit."""
    from iwm.cli import _leave_distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        _leave_distributed(finished=True)
        assert not dist.is_initialized()
        _leave_distributed(finished=False)  # nothing to close: a no-op
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@needs_gloo
def test_a_stop_signal_under_torchrun_checkpoints_within_a_step_and_the_launcher_exits_75(tmp_path, tiny_overrides):
    """The SLURM recipe's launch line (docs/scaling.md), signalled as a scheduler does (the whole process group), with
    run.log_every far above the steps done: the processes agree on the stop a step after the
    signal at most, checkpoint, and `python -m iwm.launch` exits 75 where torchrun exits 1."""
    import re
    import signal
    import time

    from iwm.checkpoint import load_checkpoint

    run = tmp_path / "run"
    args = [*_base(tiny_overrides), "data.batch_size=4", "data.num_workers=1", "eval.every=0", "run.ckpt_every=2",
            "run.log_every=1000", "optim.max_steps=1000", f"run.out_dir={run}"]
    launch = [sys.executable, "-m", "iwm.launch", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    proc = subprocess.Popen([*launch, f"--master_port={_free_port()}", "-m", "iwm.cli", "pretrain", *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while not (run / "checkpoints" / "step-00000002.pt.json").exists():  # training has begun
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=300)  # a guard against a hang, not a bound
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, err[-3000:]
    said = re.findall(r"iwm: stopped by signal SIGTERM after step (\d+)(?: \(the signal came during step (\d+)\))?; "
                      "checkpoint written", err)
    assert len(said) == 2, err[-3000:]  # one line from each process
    stop, came = int(said[0][0]), int(said[0][1] or said[0][0])
    assert stop - came <= 1 and stop < 1000
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == stop

    # the same command resumes; done, the launcher exits 0
    args = [a for a in args if not a.startswith("optim.max_steps")] + [f"optim.max_steps={stop + 2}"]
    done = subprocess.run([*launch, f"--master_port={_free_port()}", "-m", "iwm.cli", "pretrain", *args],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming run in {run}" in done.stderr


def test_the_launcher_exits_with_the_status_its_workers_agree_on():
    from iwm.launch import launcher_status

    assert launcher_status(1, {75}) == 75  # torchrun signalled, every worker checkpointed and stopped
    assert launcher_status(1, {3}) == 3  # every worker stopped on non-finite training
    assert launcher_status(1, {75, 1}) == 1  # they disagree: torchrun's
    assert launcher_status(1, set()) == 1  # none said anything (killed, or a traceback)
    assert launcher_status(0, {0}) == 0
    assert launcher_status(-9, set()) == 137  # torchrun itself killed


def test_the_slurm_recipe_launches_through_the_launcher_and_requeues_on_75():
    """The recipe's exit status is the launcher's (tested above), not torchrun's 1."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pages = [p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))]]
    page = next(text for text in pages if "#SBATCH --nodes" in text)  # docs/scaling.md, or the README before it
    recipe = page[page.index("#SBATCH --nodes"):]
    recipe = recipe[:recipe.index("```")]
    assert "srun python -m iwm.launch --nnodes" in recipe and "srun torchrun" not in recipe
    assert 'if [ "$status" -eq 75 ]; then scontrol requeue "$SLURM_JOB_ID"; fi' in recipe
