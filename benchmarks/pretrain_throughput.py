"""Pretraining throughput, time split and memory; device-side vs per-image augmentation; the
input pipeline alone, crops from the loader's workers vs cut on the device (data.on_device).

    python benchmarks/pretrain_throughput.py                 # CPU: tiny ViT, 32 px
    python benchmarks/pretrain_throughput.py --gpu           # GPU: ViT-S/16 and ViT-B/16, 224 px
    python benchmarks/pretrain_throughput.py --write docs/benchmarks.md
    python benchmarks/pretrain_throughput.py --case cifar10_equi-32px   # one case

Every figure comes from this run on this machine; the device is printed beside the table.
The training-health checks (``eval.every``) are timed between the training steps, so that a
machine shared with other work slows both alike: health_pct is one check's cost as a share of
the ``eval.every`` training steps it follows, at the config's default cadence.
Synthetic images stand in for a data set, so "data" is the loader's cost of cropping in-memory
uint8 images (decoding JPEGs from disk is the data workers' business and scales with them).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from iwm import config
from iwm.data import ArrayDataset, ResumableSampler
from iwm.data.device_crops import DeviceImages
from iwm.actions import ActionSet, move
from iwm.photometric import apply_reference, blur_kernel_size
from iwm.train import Trainer

CPU_CASES = {  # the shipped cifar10_equi model, and timm's ViT-Ti width at 32 px
    "cifar10_equi-32px": ["data.image_size=32", "model.patch_size=4", "model.embed_dim=128", "model.depth=4",
                          "model.num_heads=4", "predictor.depth=4", "predictor.width=96", "predictor.num_heads=3",
                          "predictor.per_block=false", "data.batch_size=128", "aug.blur_sigma=[0.1,1.0]"],
    "vit-ti-d6-32px": ["data.image_size=32", "model.patch_size=4", "model.size=tiny", "model.depth=6",
                       "predictor.depth=6", "predictor.width=128", "data.batch_size=128", "aug.blur_sigma=[0.1,1.0]"],
}
GPU_CASES = {
    "vit-s16-224px": ["data.image_size=224", "model.patch_size=16", "model.size=small", "predictor.depth=6",
                      "predictor.width=384", "data.batch_size=256"],
    "vit-b16-224px": ["data.image_size=224", "model.patch_size=16", "model.size=base", "predictor.depth=18",
                      "predictor.width=384", "data.batch_size=256"],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul_flops(device: torch.device, n: int = 8192, dtype: torch.dtype = torch.bfloat16,
                      reps: int = 20) -> float:
    """Measured matmul FLOP/s on this device (the denominator of MFU): bf16 by default, or
    ``dtype`` (a CPU's fp32 peak, what its training steps run at)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """PyTorch's FLOP counter, also counting the fused attention kernel PyTorch runs on a CPU,
    which it leaves out (it counts only the GPU kernels): without it a CPU step's attention,
    several % of its FLOPs, goes uncounted."""
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops})


def step_flops(trainer: Trainer, crops: torch.Tensor) -> float:
    """FLOPs of one full training step (forward + backward), counted by PyTorch."""
    x, y, a, m = trainer.make_batch(crops, 0)
    autocast = torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None)
    with flop_counter() as fc, autocast:  # the eager model: compiled or not, the same FLOPs
        trainer.model(x, y, a, m).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def bench_case(name: str, overrides: list[str], device: str, steps: int, out_dir: Path,
               synthetic_size: int = 2048, peak_flops: float | None = None, warmup: int = 3,
               health_checks: int = 3) -> dict:
    """One model's step, timed; ``peak_flops`` (a measured bf16 peak) adds its MFU; health checks
    at the config's ``eval.every`` are timed between the steps."""
    cfg = config.from_dict(None, ["data.dataset=synthetic", f"data.synthetic_size={synthetic_size}",
                                  f"run.device={device}", f"run.out_dir={out_dir / name}", "run.progress=false",
                                  "data.num_workers=2", *overrides])
    need = (warmup + steps) * cfg.data.batch_size  # the loader must not run dry within one epoch
    if cfg.data.synthetic_size < need:
        cfg = config.from_dict(cfg.to_dict(), [f"data.synthetic_size={need}"])
    t = Trainer(cfg)
    dev = t.device
    it = iter(t.loader)
    # the run's families, and the same at strength 0 (the transformations off), swapped in per step
    actions = t.batches.actions
    off = ActionSet.from_config(dataclasses.replace(cfg.aug, strength=0.0), cfg.data.image_size)
    for k in range(warmup):  # warm-up: allocator, kernels, autotuning, compilation (both kinds of step)
        t.batches.actions = actions if k % 2 == 0 else off
        t.train_step(next(it)[0])
    t.batches.actions = actions
    graphs = _compiled_graphs()
    # data: the loader alone (its workers decode and crop), batches kept for the steps below
    t0 = time.perf_counter()
    batches = [next(it)[0] for _ in range(steps)]
    data_s = (time.perf_counter() - t0) / steps
    del it  # stop the workers: on a small CPU they would compete with the timed steps
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # full steps and steps with the transformations off, interleaved on the same batches so that
    # drift on a noisy machine hits both alike; health checks in between, for the same reason
    aug_s = full_s = off_s = health_s = 0.0
    check_at = {int((i + 0.5) * steps / health_checks) for i in range(health_checks)} if t.health else set()
    if t.health:
        t.health(t.model, t.step)  # warm-up
    for i, crops in enumerate(batches):
        if i in check_at:
            sync(dev)
            t0 = time.perf_counter()
            t.health(t.model, t.step)
            sync(dev)
            health_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        t.make_batch(crops, t.step)
        sync(dev)
        t1 = time.perf_counter()
        t.train_step(crops)
        sync(dev)
        t2 = time.perf_counter()
        t.batches.actions = off
        t.train_step(crops)
        sync(dev)
        t3 = time.perf_counter()
        t.batches.actions = actions
        aug_s, full_s, off_s = aug_s + t1 - t0, full_s + t2 - t1, off_s + t3 - t2
    aug_s, full_s, off_s = aug_s / steps, full_s / steps, off_s / steps
    b = cfg.data.batch_size
    total = data_s + full_s  # a step as the loop sees it, with the loader not overlapped
    res = {"case": name, "batch": b, "images_per_s": b / full_s, "step_ms": 1000 * full_s,
           "step_ms_no_aug": 1000 * off_s, "aug_overhead_pct": 100 * (full_s / off_s - 1),
           "data_pct": 100 * data_s / total, "augment_pct": 100 * aug_s / total,
           "model_pct": 100 * (full_s - aug_s) / total}
    if cfg.run.compile:  # a graph compiled inside the timed steps would inflate them: say so
        res["recompiles"] = _compiled_graphs() - graphs
    if check_at:
        health_s /= len(check_at)
        res["health_ms"] = 1000 * health_s
        res["health_pct"] = 100 * health_s / (cfg.eval.every * full_s)
    crops = batches[-1]
    if dev.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    if peak_flops:
        res["mfu_pct"] = 100 * step_flops(t, crops) / full_s / peak_flops
    if dev.type != "cuda":
        res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    # the augmentation alone: batched on the device vs one image at a time with torchvision
    c = crops.to(dev).float().div(255)
    src, _ = actions.sample_pair(b, torch.Generator().manual_seed(0))
    src = move(src, dev)
    kernel = blur_kernel_size(cfg.aug, cfg.data.image_size)
    timings = {}
    for label, fn in (("batched", actions.apply), ("per_image", lambda z, p: apply_reference(z, p, kernel))):
        fn(c, src)
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(3):
            fn(c, src)
        sync(dev)
        timings[label] = (time.perf_counter() - t0) / 3
    res["aug_batched_ms"] = 1000 * timings["batched"]
    res["aug_per_image_ms"] = 1000 * timings["per_image"]
    res["aug_speedup"] = timings["per_image"] / timings["batched"]

    # masks for a global batch of 2048 (8 GPUs x 256): every process draws them all each step
    g = torch.Generator().manual_seed(0)
    t.masker(2048, g)
    t0 = time.perf_counter()
    for _ in range(3):
        t.masker(2048, g)
    res["masks_2048_ms"] = 1000 * (time.perf_counter() - t0) / 3
    return res


# the input pipeline alone: (stored image side, crop size, images held, batch) per device
INPUT_CASES = {
    "cpu": {"cifar-32px": (32, 32, 50000, 128), "256px-to-224px": (256, 224, 1024, 64)},
    "cuda": {"cifar-32px": (32, 32, 50000, 256), "256px-to-224px": (256, 224, 4096, 256)},
}


def bench_input(name: str, side: int, size: int, n: int, batch: int, device: str, steps: int,
                workers: int) -> dict:
    """images/s of one process's training crops, on the device and ready for make_batch: from
    the DataLoader's workers (per-sample crops, then the copy) vs data.on_device (cut there)."""
    dev = torch.device(device)
    images = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    ds = ArrayDataset(images, np.zeros(n, dtype=np.int64), size, scale=(0.3, 1.0))
    sampler = ResumableSampler(n, batch)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                        pin_memory=dev.type == "cuda", drop_last=True)
    it = iter(loader)
    for _ in range(2):  # the workers start and fill their queues
        next(it)[0].to(dev)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)[0].to(dev, non_blocking=True)
    sync(dev)
    loader_s = (time.perf_counter() - t0) / steps
    del it
    on_dev = DeviceImages(torch.from_numpy(images).permute(0, 3, 1, 2).to(dev).contiguous(),
                          torch.tensor([[side, side]]).expand(n, 2), size, (0.3, 1.0), True, seed=0)
    batches = sampler.global_batches()
    for k in range(2):
        on_dev.crops(next(batches), k)
    sync(dev)
    t0 = time.perf_counter()
    for k in range(steps):
        on_dev.crops(next(batches), k)
    sync(dev)
    device_s = (time.perf_counter() - t0) / steps
    return {"case": name, "batch": batch, "loader_workers": workers, "loader_images_per_s": batch / loader_s,
            "on_device_images_per_s": batch / device_s, "speedup": loader_s / device_s}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def table(rows: list[dict]) -> str:
    cols = ["case", "batch", "images_per_s", "step_ms", "step_ms_no_aug", "aug_overhead_pct", "data_pct",
            "augment_pct", "model_pct", "health_ms", "health_pct", "aug_batched_ms", "aug_per_image_ms",
            "aug_speedup", "masks_2048_ms", "peak_mem_gib", "peak_rss_gib", "mfu_pct", "recompiles",
            "loader_workers", "loader_images_per_s", "on_device_images_per_s", "speedup", "gflop_per_step",
            "gflop_per_s", "pct_of_fp32_peak", "note"]
    cols = [c for c in cols if any(c in r for r in rows)]

    def fmt(v: object) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="the GPU cases (ViT-S/16, ViT-B/16 at 224 px) on cuda")
    ap.add_argument("--device", default=None, help="run the chosen cases here instead (a CPU dry run of --gpu)")
    ap.add_argument("--compile", action="store_true", help="each case also with run.compile=true")
    ap.add_argument("--compile-only", action="store_true", help="each case with run.compile=true only")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every case")
    ap.add_argument("--input-steps", type=int, default=10, help="batches timed per input-pipeline case (0: skip)")
    ap.add_argument("--input-images", type=int, default=0, help="images held per input case (0: the case's)")
    ap.add_argument("--input-only", action="store_true", help="the input-pipeline table alone")
    ap.add_argument("--input-batch", type=int, default=0, help="batch of the input cases (0: the case's)")
    ap.add_argument("--out-dir", default="/tmp/iwm-bench")
    ap.add_argument("--write", default=None, help="append the tables to this markdown file")
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    ap.add_argument("--case", action="append", help="run only this case (repeatable; default: every case)")
    args = ap.parse_args()
    device = args.device or ("cuda" if args.gpu else "cpu")
    dev = torch.device(device)
    cases = {} if args.input_only else GPU_CASES if args.gpu else CPU_CASES
    unknown = set(args.case or ()) - set(cases)
    if unknown:
        ap.error(f"unknown case {', '.join(sorted(unknown))}; the cases are {', '.join(cases)}")
    cases = {n: o for n, o in cases.items() if not args.case or n in args.case}
    peak = peak_matmul_flops(dev) if dev.type == "cuda" and cases else None
    rows = []
    for name, overrides in cases.items():
        for compiled in [True] if args.compile_only else [False, True] if args.compile else [False]:
            case = name + ("+compile" if compiled else "")
            try:
                rows.append(bench_case(case, [*overrides, f"run.compile={str(compiled).lower()}", *args.set],
                                       device, args.steps, Path(args.out_dir), peak_flops=peak,
                                       warmup=8 if compiled else 3))  # compiled: room for the dynamic-shape recompile
            except torch.cuda.OutOfMemoryError:  # one case too big for this GPU: say so, measure the others
                rows.append({"case": case, "note": "out of GPU memory"})
            gc.collect()  # the case's trainer (and, after an error, its traceback) let go of its memory
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    inputs = []
    if args.input_steps:
        workers = min(8, len(os.sched_getaffinity(0)))
        for name, (side, size, n, batch) in INPUT_CASES["cuda" if args.gpu else "cpu"].items():
            batch = args.input_batch or batch
            n = max(args.input_images or n, (args.input_steps + 4) * batch)
            inputs.append(bench_input(name, side, size, n, batch, device, args.input_steps, workers))
    flags = " ".join(a for a in ("--gpu" if args.gpu else "", f"--device {args.device}" if args.device else "",
                                  "--compile" if args.compile else "", "--compile-only" if args.compile_only else "",
                                  "--input-only" if args.input_only else f"--steps {args.steps}",
                                  f"--input-steps {args.input_steps}" if args.input_steps != 10 else "",
                                  f"--set {' '.join(args.set)}" if args.set else "",
                                  *(f"--case {c}" for c in args.case or ())) if a)
    text = (f"\n### {device_name(device)} (torch {torch.__version__}, {time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `python benchmarks/pretrain_throughput.py {flags}`\n\n" + (table(rows) + "\n" if rows else ""))
    if peak:
        text += f"\nbf16 matmul peak measured on this device (the MFU denominator): {peak / 1e12:.0f} TFLOP/s\n"
    if inputs:
        text += ("\nInput pipeline alone: one process's crops on the device, ready for the step; loader = "
                 "per-sample crops in DataLoader workers + the copy, on_device = data.on_device=true\n\n"
                 + table(inputs) + "\n")
    print(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name(device), "torch": torch.__version__,
                                               "peak_bf16_flops": peak, "rows": rows, "input": inputs}, indent=2))


if __name__ == "__main__":
    main()
