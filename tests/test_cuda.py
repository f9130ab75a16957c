"""The CUDA paths, checked on a GPU: bf16 autocast against fp32, the fused AdamW's skip of a
non-finite step with no host sync, torch.compile against eager, kill and resume, the sync-free
photometric path and the device-side crops against the CPU, a one-process NCCL DDP step.

Without a GPU conftest.py skips them with a reason; IWM_CUDA_DRY_RUN=1 runs them on the CPU
with the GPU-only checks left out (sync debug mode, NCCL), to check the tests before a GPU session.
"""

import contextlib
import signal
import socket

import pytest
import torch
import torch.distributed as dist

from conftest import TINY
from iwm import config
from iwm.config import AugConfig
from iwm.data.device_crops import DeviceImages
from iwm.actions import ActionSet, move
from iwm.train import Trainer, resolve_precision
from test_photometric import _apply
from test_reliability import _cli, _losses, _wait_for

pytestmark = pytest.mark.cuda
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


@contextlib.contextmanager
def no_host_sync():
    """Inside, any host-device synchronisation raises (CUDA's sync debug mode); a no-op on the CPU."""
    if not ON_GPU:
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _trainer(tmp_path, name, *extra):
    return Trainer(config.from_dict(None, TINY + [f"run.out_dir={tmp_path / name}", f"run.device={DEVICE}", *extra]))


def _crops(trainer, n):
    it = iter(trainer.loader)
    return [next(it)[0] for _ in range(n)]


def test_bf16_steps_match_fp32_steps(tmp_path):
    if ON_GPU:
        assert resolve_precision("auto", torch.device("cuda")) == torch.bfloat16
    full = _trainer(tmp_path, "fp32", "run.precision=fp32")
    half = _trainer(tmp_path, "bf16", "run.precision=bf16")
    assert half.amp_dtype == torch.bfloat16 and full.amp_dtype is None
    crops = _crops(full, 3)
    a = torch.stack([full.train_step(c) for c in crops]).cpu()
    b = torch.stack([half.train_step(c) for c in crops]).cpu()
    assert not torch.equal(a, b)  # autocast did compute in bf16
    # bf16 keeps 8 bits of mantissa (0.4 %); through a few layers and steps, within 2 %
    assert torch.allclose(a, b, rtol=2e-2, atol=0), (a, b)


def test_nonfinite_step_is_skipped_with_the_weights_untouched_and_no_host_sync(tmp_path):
    t = _trainer(tmp_path, "nan")
    assert t.fused  # the fused AdamW takes the skip flag as a device tensor (found_inf)
    crops = _crops(t, 2)
    t.train_step(crops[0])  # the first step creates the optimizer state (a sync, once)
    before = [p.detach().clone() for p in t.params]
    moments = {k: v.clone() for k, v in t.optimizer.state[t.params[0]].items()}
    forward = t.model.forward
    t.model.forward = lambda *args: forward(*args) * float("nan")
    with no_host_sync():
        t.train_step(crops[1])
    t.model.forward = forward
    assert all(torch.equal(a, p) for a, p in zip(before, t.params))
    after = t.optimizer.state[t.params[0]]
    assert all(torch.equal(moments[k], after[k]) for k in moments)  # moments and step count too
    assert int(t.skipped) == 1 and t.step == 2
    t.train_step(crops[1])  # a sound step after it updates again
    assert not all(torch.equal(a, p) for a, p in zip(before, t.params))


def test_compiled_steps_match_eager_steps(tmp_path):
    from torch._dynamo.utils import counters

    # one 2x2 target block and the full grid as context: the same shapes every step, one compilation
    static = ["run.precision=fp32", "mask.num_targets=1", "mask.target_scale=[0.25,0.25]", "mask.target_aspect=[1,1]",
              "mask.context_scale=[1,1]"]
    eager = _trainer(tmp_path, "eager", *static)
    compiled = _trainer(tmp_path, "compiled", *static, "run.compile=true")
    graphs = counters["stats"]["unique_graphs"]
    crops = _crops(eager, 3)
    a = [float(eager.train_step(c)) for c in crops]
    b = [float(compiled.train_step(c)) for c in crops]
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo did compile the model
    assert a == pytest.approx(b, rel=1e-3)  # fused kernels reorder float operations: 0.1 % over three steps


def test_kill_and_resume_on_the_device_follow_the_same_curve(tmp_path):
    base = TINY + [f"run.device={DEVICE}", "data.on_device=true", "optim.max_steps=120", "run.ckpt_every=20",
                   "data.synthetic_size=40"]
    straight = tmp_path / "straight"
    assert _cli(base + [f"run.out_dir={straight}"]).wait() == 0
    killed = tmp_path / "killed"
    proc = _cli(base + [f"run.out_dir={killed}"])
    _wait_for((killed / "checkpoints" / "step-00000040.pt").exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_losses(killed)) < 120, "the run finished before it was killed; the test proves nothing"
    assert _cli(base + [f"run.out_dir={killed}"]).wait() == 0
    a, b = _losses(straight), _losses(killed)
    assert len(a) == len(b) == 120
    # CUDA's atomic adds (gather's backward, attention) are not bitwise reproducible run to run:
    # the resumed curve is the straight one within 0.1 %
    assert b == pytest.approx(a, rel=1e-3)


def test_sync_free_photometric_path_matches_the_cpu_path():
    cfg = AugConfig(strength=1.0, jitter_prob=1.0, grayscale_prob=0.5, blur_prob=0.5, solarize_prob=0.5,
                    blur_sigma=(0.1, 1.0))
    actions = ActionSet.from_config(cfg, 24)
    y = torch.rand(32, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    yd = y.to(DEVICE)
    for params in actions.sample_pair(32, torch.Generator().manual_seed(1)):
        on_cpu = _apply(actions, y, params, sync_free=False)  # the indexed path
        assert torch.equal(on_cpu, actions.apply(y, params))  # which the CPU takes by default
        pd = move(params, DEVICE)
        with no_host_sync():
            out = _apply(actions, yd, pd, sync_free=True)
            # and the path a device takes by default (the CPU's indexed one in a dry run)
            default = actions.apply(yd, pd)
        # one grey level: the GPU's convolutions may run in TF32, as they do in training
        assert (out.cpu() - on_cpu).abs().max() < 1 / 255
        assert (default.cpu() - on_cpu).abs().max() < 1 / 255


def test_device_crops_on_the_gpu_match_the_cpu():
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    sizes = torch.tensor([[32, 32]]).expand(40, 2)
    on_cpu = DeviceImages(images, sizes, 32, (0.3, 1.0), True, seed=0)
    on_dev = DeviceImages(images.to(DEVICE), sizes, 32, (0.3, 1.0), True, seed=0)
    glob = torch.randperm(40, generator=g)[:16]
    with no_host_sync():
        out = on_dev.crops(glob, step=7)
    assert out.device.type == DEVICE
    assert (out.cpu().int() - on_cpu.crops(glob, step=7).int()).abs().max() <= 1


def test_one_process_nccl_ddp_step_matches_a_plain_step(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if ON_GPU else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        assert dist.get_backend() == backend
        t = _trainer(tmp_path, "ddp", "run.precision=fp32")
        x, y, a, m = t.make_batch(_crops(t, 1)[0], 0)
        plain = t.model(x, y, a, m)
        plain.backward()
        grads = [p.grad.clone() for p in t.params]
        t.optimizer.zero_grad(set_to_none=True)
        ddp = torch.nn.parallel.DistributedDataParallel(t.model, device_ids=[0] if ON_GPU else None)
        loss = ddp(x, y, a, m)
        loss.backward()  # the gradients go through an all-reduce over the one process
        assert torch.allclose(loss, plain, rtol=1e-6, atol=0)
        assert all(torch.allclose(g0, p.grad, rtol=1e-5, atol=1e-7) for g0, p in zip(grads, t.params))
    finally:
        dist.destroy_process_group()
