"""The imagenet_vitb16 pretraining step on the CPU in fp32 and under bf16 autocast, side by side:
why ``run.precision=auto`` (the shipped configs' value) computes in fp32 on a CPU.

    python benchmarks/cpu_precision.py                  # ViT-B/16, 224 px, batch 4: minutes, the whole CPU
    python benchmarks/cpu_precision.py --batch 8 --steps 3

One trainer of the shipped config (synthetic 224 px images, no health checks) takes its steps
in each precision in turn, on the same batch, so that a machine busy with other work slows both
alike. Prints images/s per precision, the median step time and each step time over fp32's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from iwm import config
from iwm.config import resolve_config
from iwm.train import Trainer
from pretrain_throughput import device_name, table

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def bench_precisions(config_name: str = "imagenet_vitb16", batch: int = 4, steps: int = 2, warmup: int = 1,
                     overrides: tuple[str, ...] = (), out_dir: Path = Path("/tmp/iwm-bench")) -> list[dict]:
    """One row per precision: the median of ``steps`` timed training steps (after ``warmup``)."""
    cfg = config.load(resolve_config(config_name), [
        "data.dataset=synthetic", f"data.synthetic_size={batch}", f"data.batch_size={batch}", "data.num_workers=0",
        "run.device=cpu", "run.progress=false", "eval.every=0", f"run.out_dir={out_dir / 'cpu_precision'}",
        *overrides])
    t = Trainer(cfg)
    crops = next(iter(t.loader))[0]
    times: dict[str, list[float]] = {name: [] for name in DTYPES}
    for k in range(warmup + steps):
        for name, dtype in DTYPES.items():  # interleaved: drift in the machine's load hits both
            t.amp_dtype = dtype  # the step's autocast follows it; nothing else depends on it on the CPU
            t0 = time.perf_counter()
            t.train_step(crops)
            if k >= warmup:
                times[name].append(time.perf_counter() - t0)
    fp32 = statistics.median(times["fp32"])
    rows = []
    for name, ts in times.items():
        step = statistics.median(ts)
        rows.append({"case": name, "batch": batch, "images_per_s": batch / step, "step_ms": 1000 * step,
                     "note": f"{step / fp32:.1f}x the fp32 step"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="imagenet_vitb16", help="shipped config name or YAML file")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per precision")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per precision first")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = ap.parse_args()
    rows = bench_precisions(args.config, args.batch, args.steps, args.warmup, tuple(args.set))
    print(f"\n### {args.config} pretraining step, {device_name('cpu')} (torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')})\n")
    print(table(rows))


if __name__ == "__main__":
    main()
