"""I-JEPA multi-block masking on the patch grid.

Per batch, one target block size and one context block size are drawn (so every sample has
the same number of target tokens); per sample, ``num_targets`` target blocks and one context
block are placed at random, and the context loses every patch that any target covers, so the
predictor never sees what it must predict. Context lengths differ between samples; they are
cut to the shortest in the batch (keeping a random subset) so the batch stacks into tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import MaskConfig


@dataclass
class Masks:
    context: torch.Tensor  # (B, Nc) patch indices the context encoder sees, sorted
    targets: torch.Tensor  # (B, T, Nt) patch indices of each target block, sorted

    def to(self, device: torch.device | str) -> "Masks":
        return Masks(self.context.to(device, non_blocking=True), self.targets.to(device, non_blocking=True))


def _block_size(scale: tuple[float, float], aspect: tuple[float, float], grid: int,
                g: torch.Generator) -> tuple[int, int]:
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g).item()
    la, lb = math.log(aspect[0]), math.log(aspect[1])
    ar = math.exp(la + (lb - la) * torch.rand(1, generator=g).item())
    n = s * grid * grid
    h = max(1, min(grid, round(math.sqrt(n * ar))))
    w = max(1, min(grid, round(math.sqrt(n / ar))))
    return h, w


def _place(h: int, w: int, grid: int, g: torch.Generator) -> torch.Tensor:
    top = int(torch.randint(0, grid - h + 1, (1,), generator=g))
    left = int(torch.randint(0, grid - w + 1, (1,), generator=g))
    m = torch.zeros(grid, grid, dtype=torch.bool)
    m[top:top + h, left:left + w] = True
    return m.flatten()


class MultiBlockMasker:
    def __init__(self, cfg: MaskConfig, grid: int):
        self.cfg = cfg
        self.grid = grid

    def __call__(self, batch: int, generator: torch.Generator) -> Masks:
        c, g, grid = self.cfg, generator, self.grid
        th, tw = _block_size(c.target_scale, c.target_aspect, grid, g)
        ch, cw = _block_size(c.context_scale, (1.0, 1.0), grid, g)
        contexts, targets = [], []
        for _ in range(batch):
            for _ in range(50):
                blocks = [_place(th, tw, grid, g) for _ in range(c.num_targets)]
                covered = torch.stack(blocks).any(0)
                ctx = _place(ch, cw, grid, g) & ~covered
                if int(ctx.sum()) >= c.min_context:
                    break
            else:  # targets cover too much of this sample: fall back to every uncovered patch
                ctx = ~covered
                if int(ctx.sum()) < 1:
                    raise RuntimeError("mask: target blocks cover the whole image; lower mask.target_scale")
            contexts.append(ctx.nonzero().squeeze(1))
            targets.append(torch.stack([b.nonzero().squeeze(1) for b in blocks]))
        keep = min(len(x) for x in contexts)
        cut = []
        for ctx in contexts:
            if len(ctx) > keep:
                ctx = ctx[torch.randperm(len(ctx), generator=g)[:keep]].sort().values
            cut.append(ctx)
        return Masks(torch.stack(cut), torch.stack(targets))
