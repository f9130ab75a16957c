"""The benchmark's code paths run (on the CPU, tiny); its numbers are not checked here."""

import importlib.util
from pathlib import Path

import torch

from conftest import TINY

_spec = importlib.util.spec_from_file_location(
    "pretrain_throughput", Path(__file__).parents[1] / "benchmarks" / "pretrain_throughput.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_benchmark_case_and_flop_count(tmp_path):
    overrides = [o for o in TINY if not o.startswith(("data.dataset", "data.synthetic_size", "data.num_workers"))]
    res = bench.bench_case("tiny", overrides, "cpu", steps=2, out_dir=tmp_path, synthetic_size=64)
    assert res["images_per_s"] > 0 and res["aug_speedup"] > 0
    assert abs(res["data_pct"] + res["augment_pct"] + res["model_pct"] - 100) < 1e-6
    assert res["step_ms_no_aug"] > 0
    assert res["health_ms"] > 0 and res["health_pct"] > 0  # the health checks, timed between the steps
    assert "| tiny |" in bench.table([res])
    from iwm import config
    from iwm.train import Trainer

    t = Trainer(config.from_dict(None, TINY + [f"run.out_dir={tmp_path / 'f'}"]))
    crops = next(iter(t.loader))[0]
    assert bench.step_flops(t, crops) > 0
    assert bench.peak_matmul_flops(torch.device("cpu"), n=64) > 0


def test_input_pipeline_case():
    res = bench.bench_input("tiny", side=20, size=16, n=64, batch=8, device="cpu", steps=2, workers=0)
    assert res["loader_images_per_s"] > 0 and res["on_device_images_per_s"] > 0 and res["speedup"] > 0
    assert "| tiny |" in bench.table([res])


def test_flop_counter_counts_the_fused_attention_on_a_cpu():
    """PyTorch's counter skips the CPU's fused attention kernel; ours counts it as PyTorch counts
    the GPU's: the explicit softmax(QK^T)V's matmuls, forward and backward, and the scores that
    the backward recomputes."""
    q, k, v = (torch.randn(2, 3, 5, 4, requires_grad=True) for _ in range(3))
    with bench.flop_counter() as fused:
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
    with bench.flop_counter() as explicit:
        ((q @ k.transpose(-2, -1) / 2).softmax(-1) @ v).sum().backward()
    one_matmul = 2 * 2 * 3 * 5 * 5 * 4
    assert explicit.get_total_flops() == 6 * one_matmul  # 2 forward, 4 backward
    assert fused.get_total_flops() == 7 * one_matmul
