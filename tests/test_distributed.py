"""Two processes under torchrun (gloo, CPU) train like one process with the same global batch."""

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
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs the gloo backend")
def test_two_processes_match_one(tmp_path, tiny_overrides):
    base = [o for o in tiny_overrides if not o.startswith(("run.out_dir", "data.batch_size"))]
    base += ["optim.max_steps=6", "data.synthetic_size=64"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "iwm.cli", "pretrain", *base, "data.batch_size=8",
                          f"run.out_dir={tmp_path / 'one'}"], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                          "-m", "iwm.cli", "pretrain", *base, "data.batch_size=4", f"run.out_dir={tmp_path / 'two'}"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert a[0] != a[-1]
