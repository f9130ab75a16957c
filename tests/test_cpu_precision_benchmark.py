"""benchmarks/cpu_precision.py runs (the shipped ImageNet config shrunk to a tiny model); its
numbers are not checked here."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def test_fp32_and_bf16_steps_side_by_side(tmp_path, monkeypatch, one_thread):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: it reuses pretrain_throughput
    spec = importlib.util.spec_from_file_location("cpu_precision", BENCHMARKS / "cpu_precision.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = ("data.image_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
            "predictor.depth=1", "predictor.width=32", "predictor.num_heads=2", "mask.min_context=2")
    rows = bench.bench_precisions(batch=2, steps=1, warmup=0, overrides=tiny, out_dir=tmp_path)
    assert [r["case"] for r in rows] == ["fp32", "bf16"]
    assert all(r["images_per_s"] > 0 and r["batch"] == 2 for r in rows) and rows[0]["note"] == "1.0x the fp32 step"
    assert "| bf16 | 2 |" in bench.table(rows)
