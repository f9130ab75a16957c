"""I-JEPA multi-block masking on the patch grid.

Per batch, one target block size and one context block size are drawn (so every sample has
the same number of target tokens); per sample, ``num_targets`` target blocks and one context
block are placed at random, and the context loses every patch that any target covers, so the
predictor never sees what it must predict. Context lengths differ between samples: every sample
keeps its whole context, padded to the longest in the batch, and ``Masks.context_valid`` says
which entries are real (the attention ignores the padding). I-JEPA instead cuts every context to
the shortest in the batch (``mask.cut_context``), which on an 8x8 grid at batch 128 throws away
a third of the context on average; ``benchmarks/context_padding.py`` measures both.

When the target view y is the source x moved (a geometric action family), the blocks are still
drawn on x's patch grid, and the context loses the target blocks there: the hole in the context
is I-JEPA's, whatever the move, so which x patches the context lacks tells nothing of a_x->y
(two actions drawn with the same generator state get the same context). Target block k is then
the set of y's patches whose pixels all come from x's block k (``support``, from
:meth:`iwm.actions.ActionSet.support`, which pushes patch indicators through the families' own
``apply``: bilinear neighbours and borders included), so no context patch gives any pixel weight
to any target. A block keeps fewer patches in y when the move spreads them (a rotation, a zoom),
and the same number under a flip or quarter turn; ``Masks.target_valid`` marks the padding.
The other design, blocks drawn on y's grid and the context cut by their footprint in x, leaks
the move through the shape of the hole, and was dropped for that.
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
    # (B, T, Nt) True where a target entry is a real patch (a moved view's blocks differ in
    # size); None when every entry is real
    target_valid: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Masks":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Masks(move(self.context), move(self.targets), move(self.context_valid), move(self.target_valid))

    def __getitem__(self, idx: slice | torch.Tensor) -> "Masks":
        """The masks of some samples (a process's or a micro-batch's share), padding kept."""
        def part(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        return Masks(self.context[idx], self.targets[idx], part(self.context_valid), part(self.target_valid))

    def trimmed(self) -> "Masks":
        """The same masks without the padding columns no sample here needs."""
        if self.context_valid is None:
            return self
        longest = int(self.context_valid.sum(1).max())
        valid = self.context_valid[:, :longest]
        return Masks(self.context[:, :longest], self.targets, None if bool(valid.all()) else valid, self.target_valid)

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

    def __call__(self, batch: int, generator: torch.Generator, support: torch.Tensor | None = None) -> Masks:
        """The masks of a batch. ``support`` (B, N, N) bool: [b, n, m] where y's patch n takes
        any pixel weight from x's patch m (None: the views share their frame, n from n). What is
        drawn from ``generator``, and so the context, does not depend on ``support``."""
        blocks, target_idx, context = self.draw(batch, generator)
        target_valid = None
        if support is not None:
            target_idx, target_valid = moved_targets(blocks, support)
        if self.cfg.cut_context:
            return Masks(cut_context(context, generator), target_idx, None, target_valid)
        idx, valid = pad_context(context)  # every sample keeps its whole context
        return Masks(idx, target_idx, valid, target_valid)

    def draw(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The blocks on x's grid: (B, T, N) target blocks, (B, T, Nt) their patch indices and
        the (B, N) context, which is the context block less every target block."""
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
            ctx = _blocks(ch, cw, k, grid, g)[0] & ~blocks.any(1)
            targets[redo], target_idx[redo], context[redo] = blocks, idx.view(k, c.num_targets, -1), ctx
            redo = redo[ctx.sum(1) < c.min_context]
            if not len(redo):
                break
        else:  # targets cover too much of these samples: fall back to every uncovered patch
            context[redo] = ~targets[redo].any(1)
            if (context[redo].sum(1) < 1).any():
                raise NoContextError("mask: target blocks cover the whole image; lower mask.target_scale")
        return targets, target_idx, context


def moved_targets(blocks: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, N) blocks on x's grid and (B, N, N) support ([b, n, m]: y's patch n takes pixel
    weight from x's patch m) -> each block's patches in y, (B, T, Nt) indices in patch order,
    padded with 0, and (B, T, Nt) validity: the y patches whose every pixel comes from inside
    the block (a patch that shows only the black past x's border shows nothing, and is left out)."""
    n = support.shape[-1]
    support = support.to(blocks.device)
    outside = (support.unsqueeze(1) & ~blocks.unsqueeze(2)).any(-1)  # (B, T, N): weight from outside the block
    keep = support.any(-1).unsqueeze(1) & ~outside
    longest = max(1, int(keep.sum(-1).max()))
    idx = torch.where(keep, torch.arange(n, device=keep.device), n).sort(-1).values[..., :longest]
    valid = idx < n
    return idx.masked_fill(~valid, 0), valid


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


def distinct_targets(targets: torch.Tensor, n: int, sync_free: bool | None = None,
                     valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, K) target blocks on an ``n``-patch grid (``valid``: (B, T, K), False on padding
    entries) -> (B, U) the distinct patches they cover,
    in patch order, padded with index 0, and (B, U) how many blocks cover each (0: padding).
    Blocks overlap (``benchmarks/context_padding.py`` counts both), and a patch in two blocks is
    one prediction counted twice: the one-pass predictor predicts each patch once. U is the most
    any sample covers; with ``sync_free`` (default: off the CPU) the most the blocks could cover,
    so that the host does not wait for the device to read the count back."""
    flat = targets.flatten(1)
    counts = torch.zeros(flat.shape[0], n, dtype=torch.long, device=flat.device)
    weight = torch.ones_like(flat) if valid is None else valid.flatten(1).long()
    counts.scatter_add_(1, flat, weight)
    present = counts > 0
    if sync_free is None:
        sync_free = flat.device.type != "cpu"
    # at least one column: a moved view can leave a sample (or a whole group) with no target
    longest = min(n, flat.shape[1]) if sync_free else max(1, int(present.sum(1).max()))
    idx = torch.where(present, torch.arange(n, device=flat.device), n).sort(1).values[:, :longest]
    pad = idx == n
    idx = idx.masked_fill(pad, 0)
    return idx, counts.gather(1, idx).masked_fill(pad, 0)
