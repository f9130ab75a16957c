"""The IWM objective: context encoder + predictor regress the EMA target encoder's tokens."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..masks import Masks, distinct_targets
from .encoder import Encoder, gather_tokens
from .predictor import Predictor


LOSSES = {"l2": F.mse_loss, "smooth_l1": F.smooth_l1_loss}


class IWM(nn.Module):
    """Holds the three networks. ``forward`` returns the loss of one batch.

    The target encoder starts as a copy of the encoder, never receives gradients and follows
    it by an exponential moving average (:meth:`update_target`).
    """

    def __init__(self, encoder: Encoder, predictor: Predictor, per_block: bool = True, loss: str = "l2",
                 length_groups: int = 1):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.per_block = per_block
        self.loss = LOSSES[loss]
        self.length_groups = length_groups
        self.encoder = encoder
        self.predictor = predictor
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)

    @torch.no_grad()
    def targets(self, y: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """Target tokens of y (only those at ``at`` (B, K), if given), layer-normed without
        affine parameters (as I-JEPA)."""
        t = self.target_encoder.tokens(y, at=at)
        return F.layer_norm(t, t.shape[-1:])

    def forward(self, x: torch.Tensor, y: torch.Tensor, action: torch.Tensor, masks: Masks) -> torch.Tensor:
        """x, y: normalised source and target views (B, 3, H, W); action a_x->y (B, A).
        With ``per_block`` each target block is predicted in its own predictor pass (I-JEPA);
        otherwise the mask tokens of all blocks go through one pass.

        Contexts are padded to the longest; with ``length_groups`` > 1 the samples are sorted by
        context length and run in that many groups, each padded only to its own longest: the
        same loss for less padding (on a CPU, 4 groups of an 8x8-grid batch of 128 save about a
        quarter of the step)."""
        if self.length_groups > 1 and masks.context_valid is not None:
            order = masks.context_lengths().argsort(stable=True)
            total = x.new_zeros(())
            for idx in order.chunk(self.length_groups):
                total = total + self._loss(x[idx], y[idx], action[idx], masks[idx].trimmed()) * len(idx)
            return total / x.shape[0]
        return self._loss(x, y, action, masks)

    def _loss(self, x: torch.Tensor, y: torch.Tensor, action: torch.Tensor, masks: Masks) -> torch.Tensor:
        b, t, _ = masks.targets.shape
        valid = masks.context_valid
        context = self.encoder.tokens(x, masks.context, valid)
        if self.per_block:

            def rep(z: torch.Tensor | None) -> torch.Tensor | None:  # one row per target block
                return None if z is None else z.repeat_interleave(t, 0)

            tidx = masks.targets.flatten(0, 1)
            pred = self.predictor(rep(context), rep(masks.context), tidx, rep(action), rep(valid))
            truth = gather_tokens(rep(self.targets(y)), tidx)
            return self.loss(pred.float(), truth.float())
        # one pass: a patch in several blocks is predicted once and its loss counted as often,
        # the same loss as with every block's copy in the sequence (see Predictor.forward)
        tidx, counts = distinct_targets(masks.targets, self.encoder.num_patches)
        pred = self.predictor(context, masks.context, tidx, action, valid, target_counts=counts)
        per_token = self.loss(pred.float(), self.targets(y, tidx).float(), reduction="none").mean(-1)
        return (per_token * counts).sum() / masks.targets.numel()

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        src = [p.detach() for p in self.encoder.parameters()]
        dst = list(self.target_encoder.parameters())
        torch._foreach_lerp_(dst, src, 1.0 - momentum)
