"""What keeping every sample's whole context costs: the same training steps with contexts padded
to the longest in the batch (what ``iwm`` does), padded within 4 groups of similar length
(``mask.length_groups=4``), and cut to the shortest (I-JEPA's rule), on the same masks,
interleaved so that all see the same machine load; also how much context each keeps.

    python benchmarks/context_padding.py --config cifar10_equi --steps 20

Prints one JSON object: context tokens per sample (mean, kept by the cut, padded length), target
entries per sample and the distinct patches they cover (the blocks overlap; the one-pass
predictor predicts each patch once), median step times and the median per-step ratios to the cut.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from iwm import config
from iwm.config import resolve_config
from iwm.masks import Masks, MultiBlockMasker, cut_context, distinct_targets
from iwm.train import build_model, build_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="cifar10_equi")
    ap.add_argument("--steps", type=int, default=20, help="timed step pairs (after 3 warm-up pairs)")
    ap.add_argument("--mask-batches", type=int, default=400, help="batches drawn for the context statistics")
    args = ap.parse_args()
    cfg = config.load(resolve_config(args.config), ["data.dataset=synthetic"])
    grid = cfg.data.image_size // cfg.model.patch_size
    masker, b = MultiBlockMasker(cfg.mask, grid), cfg.data.batch_size

    lengths, shortest, padded, entries, distinct = [], [], [], [], []
    for s in range(args.mask_batches):
        drawn = masker(b, torch.Generator().manual_seed(s))
        n = drawn.context_lengths().float()
        lengths.append(n.mean().item())
        shortest.append(n.min().item())
        padded.append(n.max().item())
        entries.append(drawn.targets[0].numel())
        distinct.append((distinct_targets(drawn.targets, grid * grid)[1] > 0).sum().item() / b)

    model = build_model(cfg)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    x, action = torch.randn(b, 3, cfg.data.image_size, cfg.data.image_size), torch.randn(b, 7)

    def step(masks: Masks, groups: int) -> float:
        model.length_groups = groups
        t0 = time.perf_counter()
        model(x, x, action, masks).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"padded": [], "grouped": [], "cut": []}
    ratios: dict[str, list[float]] = {"padded": [], "grouped": []}
    for s in range(args.steps + 3):
        whole = masker(b, torch.Generator().manual_seed(10_000 + s))
        valid = whole.context_valid if whole.context_valid is not None else torch.ones_like(whole.context).bool()
        real = torch.zeros(b, grid * grid, dtype=torch.bool).scatter_(1, whole.context, valid)
        cut = Masks(cut_context(real, torch.Generator().manual_seed(s)), whole.targets)  # the same masks, cut
        cases = [("padded", whole, 1), ("grouped", whole, 4), ("cut", cut, 1)]
        t = {name: step(m, groups) for name, m, groups in (cases if s % 2 else cases[::-1])}
        if s >= 3:
            for k, v in t.items():
                times[k].append(v)
            for k in ratios:
                ratios[k].append(t[k] / t["cut"])
    mean = statistics.mean
    print(json.dumps({
        "config": args.config, "batch": b, "grid": f"{grid}x{grid}", "threads": torch.get_num_threads(),
        "context_tokens_mean": round(mean(lengths), 2),
        "context_tokens_kept_by_cut": round(mean(shortest), 2),
        "kept_by_cut_pct": round(100 * mean(shortest) / mean(lengths), 1),
        "smallest_cut": min(shortest), "padded_length_mean": round(mean(padded), 2),
        "target_entries": round(mean(entries), 2), "distinct_target_patches_mean": round(mean(distinct), 2),
        **{f"step_ms_{k}": round(1000 * statistics.median(v), 1) for k, v in times.items()},
        **{f"{k}_over_cut": round(statistics.median(v), 3) for k, v in ratios.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
