"""Pretraining throughput, time split and memory; device-side vs per-image augmentation.

    python benchmarks/pretrain_throughput.py                 # CPU: tiny ViT, 32 px
    python benchmarks/pretrain_throughput.py --gpu           # GPU: ViT-S/16 and ViT-B/16, 224 px
    python benchmarks/pretrain_throughput.py --write docs/benchmarks.md

Every figure comes from this run on this machine; the device is printed beside the table.
Synthetic images stand in for a data set, so "data" is the loader's cost of cropping in-memory
uint8 images (decoding JPEGs from disk is the data workers' business and scales with them).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import torch

from iwm import config
from iwm.photometric import apply, apply_reference
from iwm.train import Trainer

CPU_CASES = {"tiny-32px": ["data.image_size=32", "model.patch_size=4", "model.size=tiny", "model.depth=6",
                           "predictor.depth=6", "predictor.width=128", "data.batch_size=128"]}
GPU_CASES = {
    "vit-s16-224px": ["data.image_size=224", "model.patch_size=16", "model.size=small", "predictor.depth=6",
                      "predictor.width=384", "data.batch_size=256"],
    "vit-b16-224px": ["data.image_size=224", "model.patch_size=16", "model.size=base", "predictor.depth=18",
                      "predictor.width=384", "data.batch_size=256"],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bf16_flops(device: torch.device, n: int = 8192) -> float:
    """Measured bf16 matmul FLOP/s on this device (the denominator of MFU)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def step_flops(trainer: Trainer, crops: torch.Tensor) -> float:
    """FLOPs of one full training step (forward + backward), counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y, a, m = trainer.make_batch(crops, 0)
    with FlopCounterMode(display=False) as fc:
        trainer.net(x, y, a, m).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def bench_case(name: str, overrides: list[str], device: str, steps: int, out_dir: Path,
               synthetic_size: int = 2048, mfu: bool = True) -> dict:
    cfg = config.from_dict(None, ["data.dataset=synthetic", f"data.synthetic_size={synthetic_size}",
                                  f"run.device={device}", f"run.out_dir={out_dir / name}", "run.progress=false",
                                  "data.num_workers=2", *overrides])
    t = Trainer(cfg)
    dev = t.device
    it = iter(t.loader)
    for _ in range(3):  # warm-up: allocator, kernels, autotuning
        t.train_step(next(it)[0])
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    split = {"data": 0.0, "augment": 0.0, "model": 0.0}
    for _ in range(steps):
        t0 = time.perf_counter()
        try:
            crops = next(it)[0]
        except StopIteration:
            it = iter(t.loader)
            crops = next(it)[0]
        t1 = time.perf_counter()
        batch = t.make_batch(crops, t.step)
        sync(dev)
        t2 = time.perf_counter()
        t.train_step(crops)  # includes make_batch again: subtract it below
        sync(dev)
        t3 = time.perf_counter()
        split["data"] += t1 - t0
        split["augment"] += t2 - t1
        split["model"] += (t3 - t2) - (t2 - t1)
        del batch
    wall = sum(split.values())  # data + augmentation + the rest of the step
    b = cfg.data.batch_size
    res = {"case": name, "batch": b, "images_per_s": steps * b / wall, "step_ms": 1000 * wall / steps,
           **{f"{k}_pct": 100 * v / wall for k, v in split.items()}}
    if dev.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    if mfu and dev.type == "cuda":
        res["mfu_pct"] = 100 * step_flops(t, crops) / (wall / steps) / peak_bf16_flops(dev)
    if dev.type != "cuda":
        res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    # the augmentation alone: batched on the device vs one image at a time with torchvision
    c = crops.to(dev).float().div(255)
    src, _ = t.photometric.sample_pair(b, torch.Generator().manual_seed(0))
    src = src.to(dev)
    timings = {}
    for label, fn in (("batched", apply), ("per_image", apply_reference)):
        fn(c, src, t.kernel_size)
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(3):
            fn(c, src, t.kernel_size)
        sync(dev)
        timings[label] = (time.perf_counter() - t0) / 3
    res["aug_batched_ms"] = 1000 * timings["batched"]
    res["aug_per_image_ms"] = 1000 * timings["per_image"]
    res["aug_speedup"] = timings["per_image"] / timings["batched"]

    # the full step with augmentation switched off (strength 0 skips every op)
    t.photometric.cfg.strength = 0.0
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        t.train_step(crops)
    sync(dev)
    res["step_ms_no_aug"] = 1000 * (time.perf_counter() - t0) / steps
    return res


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def table(rows: list[dict]) -> str:
    cols = ["case", "batch", "images_per_s", "step_ms", "step_ms_no_aug", "data_pct", "augment_pct", "model_pct",
            "aug_batched_ms", "aug_per_image_ms", "aug_speedup", "peak_mem_gib", "peak_rss_gib", "mfu_pct"]
    cols = [c for c in cols if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="the GPU cases (ViT-S/16, ViT-B/16 at 224 px)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out-dir", default="/tmp/iwm-bench")
    ap.add_argument("--write", default=None, help="append the table to this markdown file")
    args = ap.parse_args()
    device = "cuda" if args.gpu else "cpu"
    cases = GPU_CASES if args.gpu else CPU_CASES
    rows = [bench_case(n, o, device, args.steps, Path(args.out_dir)) for n, o in cases.items()]
    text = (f"\n### {device_name(device)} (torch {torch.__version__}, {time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `python benchmarks/pretrain_throughput.py{' --gpu' if args.gpu else ''} --steps {args.steps}`\n\n"
            + table(rows) + "\n")
    print(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
