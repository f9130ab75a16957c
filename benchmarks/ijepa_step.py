"""Our pretraining step beside the official I-JEPA step, at the same sizes, on the same machine,
interleaved: images/s, FLOPs per step (PyTorch's FLOP counter, with the CPU's fused attention
counted) and the FLOP rate of each, also as a share of the machine's fp32 matmul peak measured in
the same run.

    git clone https://github.com/facebookresearch/ijepa /path/to/ijepa   # never vendored: its licence
    python benchmarks/ijepa_step.py --ijepa /path/to/ijepa                # is non-commercial
    python benchmarks/ijepa_step.py                                       # without it: ours alone
    python benchmarks/ijepa_step.py --ijepa PATH --variant groups1:mask.length_groups=1   # and a variant
    python benchmarks/ijepa_step.py --ijepa PATH --variant bf16mm:matmul=bf16   # oneDNN fp32 matmuls in bf16
    python benchmarks/ijepa_step.py --ijepa PATH --variant math:attention=math  # timm's explicit attention

Ours is the whole step of the shipped config (photometric views, masks, context encoder,
predictor, EMA target encoder, AdamW, EMA update) on a fixed batch of synthetic crops. I-JEPA's
is its ``train.py`` step (target encoder without grad, context encoder on its masks, predictor,
smooth-L1, AdamW, EMA), built from its own modules with the same encoder and predictor sizes and
its multi-block collator drawing masks of the same scales, before the clock starts (its data
workers draw them). Each repeat times ``--steps`` steps of one, then of the other.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from iwm import config
from iwm.config import encoder_dims, resolve_config
from iwm.train import Trainer
from pretrain_throughput import device_name, flop_counter, peak_matmul_flops, table


OUT = Path("/tmp/iwm-bench/ijepa_step")  # the trainers' run directories (nothing is saved there)


def our_step(cfg_name: str, batch: int, overrides: tuple[str, ...], name: str = "iwm", attention: str = "sdpa"):
    """A function doing one of our training steps on a fixed batch, and the config. ``attention``:
    ``sdpa`` (timm's default, PyTorch's fused kernel) or ``math`` (timm's explicit softmax(QK^T)V,
    as I-JEPA's blocks compute it)."""
    out = OUT / "".join(c if c.isalnum() else "_" for c in name)
    cfg = config.load(resolve_config(cfg_name), [
        "data.dataset=synthetic", f"data.synthetic_size={batch}", f"data.batch_size={batch}", "data.num_workers=0",
        "run.device=cpu", "run.progress=false", "eval.every=0", f"run.out_dir={out}", *overrides])
    t = Trainer(cfg)
    for m in t.model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = attention == "sdpa"
    crops = next(iter(t.loader))[0]
    return (lambda: t.train_step(crops)), cfg


def ijepa_step(path: Path, cfg, batch: int, steps: int):
    """A function doing one I-JEPA training step (its masks drawn ahead, one set per call)."""
    sys.path.insert(0, str(path))
    from src.masks.multiblock import MaskCollator
    from src.masks.utils import apply_masks
    from src.models.vision_transformer import VisionTransformer, VisionTransformerPredictor
    from src.utils.tensors import repeat_interleave_batch

    size, patch, m, p = cfg.data.image_size, cfg.model.patch_size, cfg.mask, cfg.predictor
    dim, depth, heads = encoder_dims(cfg.model)
    encoder = VisionTransformer(img_size=[size], patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                                qkv_bias=True)
    predictor = VisionTransformerPredictor(num_patches=(size // patch) ** 2, embed_dim=dim,
                                           predictor_embed_dim=p.width, depth=p.depth,
                                           num_heads=p.num_heads or max(1, p.width // 64), qkv_bias=True)
    target = copy.deepcopy(encoder).requires_grad_(False)
    opt = torch.optim.AdamW([*encoder.parameters(), *predictor.parameters()], lr=1e-3, weight_decay=0.04)
    collate = MaskCollator(input_size=(size, size), patch_size=patch, enc_mask_scale=tuple(m.context_scale),
                           pred_mask_scale=tuple(m.target_scale), aspect_ratio=tuple(m.target_aspect), nenc=1,
                           npred=m.num_targets, allow_overlap=False, min_keep=m.min_context)
    images = torch.randn(batch, 3, size, size)
    drawn = [collate([(images[i], 0) for i in range(batch)]) for _ in range(steps)]
    state = {"k": 0}

    def step() -> None:
        _, masks_enc, masks_pred = drawn[state["k"] % len(drawn)]
        state["k"] += 1
        with torch.no_grad():
            h = F.layer_norm(target(images), (dim,))
            h = repeat_interleave_batch(apply_masks(h, masks_pred), batch, repeat=len(masks_enc))
        z = predictor(encoder(images, masks_enc), masks_enc, masks_pred)
        F.smooth_l1_loss(z, h).backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for q, k in zip(encoder.parameters(), target.parameters()):
                k.mul_(0.996).add_(0.004 * q.detach())

    return step, drawn


def with_matmul_precision(step, precision: str):
    """``step`` with oneDNN's fp32 matmuls computed at ``precision`` (bf16, tf32), restored after."""
    def run() -> None:
        before = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = precision
        try:
            step()
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = before

    return run


def flops(step) -> float:
    with flop_counter() as counter:
        step()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ijepa", type=Path, default=None, help="a checkout of facebookresearch/ijepa")
    ap.add_argument("--config", default="cifar10_equi")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-size", type=int, default=2048,
                    help="n of the n x n fp32 matmuls that measure the machine's peak FLOP rate")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of our config")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="also time our step with these overrides, as NAME (repeatable)")
    args = ap.parse_args(argv)
    ours, cfg = our_step(args.config, args.batch, tuple(args.set))
    steps = {"iwm": ours}
    for variant in args.variant:
        name, _, overrides = variant.partition(":")
        keys = overrides.split(",")
        special = {k.split("=", 1)[0]: k.split("=", 1)[1] for k in keys if k.startswith(("matmul=", "attention="))}
        precision = special.get("matmul")
        step = our_step(args.config, args.batch, (*args.set, *(k for k in keys if k.split("=", 1)[0] not in special)),
                        name, special.get("attention", "sdpa"))[0]
        steps[f"iwm, {name}"] = step if precision is None else with_matmul_precision(step, precision)
    if args.ijepa is None:
        print("no --ijepa checkout given: timing our step alone (clone facebookresearch/ijepa to compare)")
    else:
        steps["I-JEPA"], drawn = ijepa_step(args.ijepa, cfg, args.batch, args.steps * args.repeats + 2)
        kept = [len(d[1][0][0]) for d in drawn]
        print(f"I-JEPA's collator kept {statistics.mean(kept):.1f} context tokens a sample on average (cut to "
              "the shortest of each batch)")
    counted = {name: flops(step) for name, step in steps.items()}
    for step in steps.values():
        step()  # warm-up
    peaks = [peak_matmul_flops(torch.device("cpu"), args.peak_size, torch.float32, reps=10)]
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():  # interleaved: drift in the machine's load hits both
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)
    peaks.append(peak_matmul_flops(torch.device("cpu"), args.peak_size, torch.float32, reps=10))
    peak = max(peaks)  # before and after the steps: the best the machine did
    base = statistics.median(times["I-JEPA"]) if "I-JEPA" in times else None
    rows = []
    for name, ts in times.items():
        step_s = statistics.median(ts)
        rate = counted[name] / step_s
        rows.append({"case": name, "batch": args.batch, "images_per_s": args.batch / step_s, "step_ms": 1000 * step_s,
                     "gflop_per_step": counted[name] / 1e9, "gflop_per_s": rate / 1e9,
                     "pct_of_fp32_peak": 100 * rate / peak,
                     "note": "" if base is None else f"{base / step_s:.2f}x I-JEPA's images/s"})
    print(f"\n### {args.config} step beside I-JEPA's, {device_name('cpu')} (torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, {args.repeats} repeats of {args.steps} steps, medians; fp32 matmul "
          f"peak {peak / 1e9:.1f} GFLOP/s, {args.peak_size}^2 matrices, best of before and after)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
