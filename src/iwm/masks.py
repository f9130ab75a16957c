"""I-JEPA multi-block masking on the patch grid.

Per batch, one target block size and one context block size are drawn (so every sample has
the same number of target tokens); per sample, ``num_targets`` target blocks and one context
block are placed at random, and the context loses every patch that any target covers, so the
predictor never sees what it must predict. Context lengths differ between samples: every sample
keeps its whole context, padded to the longest in the batch, and ``Masks.context_valid`` says
which entries are real (the attention ignores the padding). I-JEPA instead cuts every context to
the shortest in the batch (``mask.cut_context``), which on an 8x8 grid at batch 128 throws away
a third of the context on average; ``benchmarks/context_padding.py`` measures both.

When the target view is the source moved (a geometric action family), the target blocks are
drawn on the target's patch grid, as their positions are the target's, and the context loses
every source patch that a target block takes pixels from (``overlap``, from
:meth:`iwm.actions.ActionSet.overlap`), so the context still never shows what is predicted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import MaskConfig


class NoContextError(RuntimeError):
    """The target blocks (and the source patches they take pixels from) leave no context patch."""


@dataclass
class Masks:
    context: torch.Tensor  # (B, Nc) patch indices the context encoder sees, sorted; padding at the end
    targets: torch.Tensor  # (B, T, Nt) patch indices of each target block, sorted
    # (B, Nc) True where context holds a real patch; None when no sample is padded
    context_valid: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Masks":
        valid = None if self.context_valid is None else self.context_valid.to(device, non_blocking=True)
        return Masks(self.context.to(device, non_blocking=True), self.targets.to(device, non_blocking=True), valid)

    def __getitem__(self, idx: slice | torch.Tensor) -> "Masks":
        """The masks of some samples (a process's or a micro-batch's share), padding kept."""
        valid = None if self.context_valid is None else self.context_valid[idx]
        return Masks(self.context[idx], self.targets[idx], valid)

    def trimmed(self) -> "Masks":
        """The same masks without the padding columns no sample here needs."""
        if self.context_valid is None:
            return self
        longest = int(self.context_valid.sum(1).max())
        valid = self.context_valid[:, :longest]
        return Masks(self.context[:, :longest], self.targets, None if bool(valid.all()) else valid)

    def context_lengths(self) -> torch.Tensor:
        """(B,) number of real context patches per sample."""
        if self.context_valid is None:
            return torch.full(self.context.shape[:1], self.context.shape[1], device=self.context.device)
        return self.context_valid.sum(1)


def _block_size(scale: tuple[float, float], aspect: tuple[float, float], grid: int,
                g: torch.Generator) -> tuple[int, int]:
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g).item()
    la, lb = math.log(aspect[0]), math.log(aspect[1])
    ar = math.exp(la + (lb - la) * torch.rand(1, generator=g).item())
    n = s * grid * grid
    h = max(1, min(grid, round(math.sqrt(n * ar))))
    w = max(1, min(grid, round(math.sqrt(n / ar))))
    return h, w


def _blocks(h: int, w: int, n: int, grid: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` h x w blocks at random positions: (n, grid * grid) boolean masks and (n, h * w)
    patch indices in row-major order."""
    top = torch.randint(0, grid - h + 1, (n, 1), generator=g)
    left = torch.randint(0, grid - w + 1, (n, 1), generator=g)
    r = torch.arange(grid)
    rows = (r >= top) & (r < top + h)
    cols = (r >= left) & (r < left + w)
    offsets = (torch.arange(h)[:, None] * grid + torch.arange(w)).flatten()
    return (rows[:, :, None] & cols[:, None, :]).flatten(1), (top * grid + left) + offsets


class MultiBlockMasker:
    """Draws the masks of a whole batch with batched tensor ops (no Python loop over samples):
    a global batch of thousands takes milliseconds, which matters because every process draws
    the global batch's masks (then takes its slice) to stay independent of the process count."""

    def __init__(self, cfg: MaskConfig, grid: int):
        self.cfg = cfg
        self.grid = grid

    def __call__(self, batch: int, generator: torch.Generator, overlap: torch.Tensor | None = None) -> Masks:
        """The masks of a batch. ``overlap`` (B, N, N) bool: [b, n, m] where target patch n takes
        pixels from source patch m (None: the views share their frame, n from n)."""
        c, g, grid = self.cfg, generator, self.grid
        n = grid * grid
        th, tw = _block_size(c.target_scale, c.target_aspect, grid, g)
        ch, cw = _block_size(c.context_scale, (1.0, 1.0), grid, g)
        targets = torch.zeros(batch, c.num_targets, n, dtype=torch.bool)
        target_idx = torch.zeros(batch, c.num_targets, th * tw, dtype=torch.long)
        context = torch.zeros(batch, n, dtype=torch.bool)
        redo = torch.arange(batch)  # samples whose context is still too small: drawn again
        for _ in range(50):
            k = len(redo)
            blocks, idx = _blocks(th, tw, k * c.num_targets, grid, g)
            blocks = blocks.view(k, c.num_targets, n)
            ctx = _blocks(ch, cw, k, grid, g)[0] & ~_covered(blocks.any(1), overlap, redo)
            targets[redo], target_idx[redo], context[redo] = blocks, idx.view(k, c.num_targets, -1), ctx
            redo = redo[ctx.sum(1) < c.min_context]
            if not len(redo):
                break
        else:  # targets cover too much of these samples: fall back to every uncovered patch
            context[redo] = ~_covered(targets[redo].any(1), overlap, redo)
            if (context[redo].sum(1) < 1).any():
                raise NoContextError("mask: target blocks cover the whole image; lower mask.target_scale")
        if c.cut_context:
            return Masks(cut_context(context, g), target_idx)
        idx, valid = pad_context(context)  # every sample keeps its whole context
        return Masks(idx, target_idx, valid)


def _covered(target: torch.Tensor, overlap: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """(k, N) target patches -> (k, N) source patches they take pixels from."""
    if overlap is None:
        return target
    return (target.unsqueeze(-1) & overlap[rows]).any(1)


def cut_context(context: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(B, N) boolean context masks -> (B, K) patch indices in patch order, K the shortest
    context: a random subset of each longer context is dropped (I-JEPA's rule)."""
    keep = int(context.sum(1).min())
    keys = torch.where(context, torch.rand(context.shape, generator=g), 2.0)
    return keys.argsort(1)[:, :keep].sort(1).values


def pad_context(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, N) boolean context masks -> (B, Nc) patch indices in patch order, padded to the
    longest context with index 0, and the (B, Nc) validity mask (None when nothing is padded)."""
    n = context.shape[1]
    lengths = context.sum(1)
    longest = int(lengths.max())
    order = torch.where(context, torch.arange(n), n).sort(1).values[:, :longest]
    valid = order < n
    if bool(valid.all()):
        return order, None
    return order.masked_fill(~valid, 0), valid


def distinct_targets(targets: torch.Tensor, n: int, sync_free: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, K) target blocks on an ``n``-patch grid -> (B, U) the distinct patches they cover,
    in patch order, padded with index 0, and (B, U) how many blocks cover each (0: padding).
    Blocks overlap (``benchmarks/context_padding.py`` counts both), and a patch in two blocks is
    one prediction counted twice: the one-pass predictor predicts each patch once. U is the most
    any sample covers; with ``sync_free`` (default: off the CPU) the most the blocks could cover,
    so that the host does not wait for the device to read the count back."""
    flat = targets.flatten(1)
    counts = torch.zeros(flat.shape[0], n, dtype=torch.long, device=flat.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    present = counts > 0
    if sync_free is None:
        sync_free = flat.device.type != "cpu"
    longest = min(n, flat.shape[1]) if sync_free else int(present.sum(1).max())
    idx = torch.where(present, torch.arange(n, device=flat.device), n).sort(1).values[:, :longest]
    pad = idx == n
    idx = idx.masked_fill(pad, 0)
    return idx, counts.gather(1, idx).masked_fill(pad, 0)
