"""benchmarks/ijepa_step.py runs without an I-JEPA checkout (our step alone, said so) and times a
variant of our config beside it; its numbers are not checked here."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
TINY = ["data.image_size=16", "model.patch_size=4", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
        "predictor.depth=1", "predictor.width=32", "predictor.num_heads=2", "mask.min_context=2",
        "mask.length_groups=2"]


def test_our_step_alone_and_a_variant(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: it reuses pretrain_throughput
    spec = importlib.util.spec_from_file_location("ijepa_step", BENCHMARKS / "ijepa_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "OUT", tmp_path)
    bench.main(["--batch", "4", "--steps", "1", "--repeats", "1", "--peak-size", "64", "--set", *TINY,
                "--variant", "one group:mask.length_groups=1", "--variant", "bf16mm:matmul=bf16",
                "--variant", "math:attention=math"])
    out = capsys.readouterr().out
    assert "timing our step alone" in out
    assert "| iwm | 4 |" in out and "| iwm, one group | 4 |" in out and "| iwm, bf16mm | 4 |" in out and "| iwm, math | 4 |" in out
    assert "I-JEPA |" not in out
    assert "pct_of_fp32_peak" in out and "fp32 matmul peak" in out
