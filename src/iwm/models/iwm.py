"""The IWM objective: context encoder + predictor regress the target tokens of y (the EMA target
encoder's, or the encoder's own), plus any regularizer on the embeddings."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..masks import Masks, distinct_targets
from .encoder import Encoder, gather_tokens
from .predictor import Predictor
from .regularizers import Regularizer


LOSSES = {"l2": F.mse_loss, "smooth_l1": F.smooth_l1_loss}
Truth = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # distinct target patches, their counts, target tokens


def _rows(truth: Truth, idx: torch.Tensor) -> Truth:
    """Some samples' share of ``truth``, without the padding columns none of them needs."""
    counts = truth[1][idx]
    longest = max(1, int((counts > 0).sum(1).max()))  # a group may have no target left (moved views)
    return truth[0][idx, :longest], counts[:, :longest], truth[2][idx, :longest]


class IWM(nn.Module):
    """Holds the three networks. ``forward`` returns the loss of one batch.

    The target encoder starts as a copy of the encoder, never receives gradients and follows
    it by an exponential moving average (:meth:`update_target`). With ``online`` targets the
    predictor regresses the encoder's own tokens of y, gradient and all (no teacher), and the
    target encoder is kept an exact copy of the encoder, for everything that reads it.
    ``regularizer`` (weight ``reg_weight``) acts on the context encoder's tokens, each one or
    their mean per image (``reg_embeddings``).
    """

    def __init__(self, encoder: Encoder, predictor: Predictor, per_block: bool = True, loss: str = "l2",
                 length_groups: int = 1, online: bool = False, regularizer: Regularizer | None = None,
                 reg_weight: float = 0.0, reg_embeddings: str = "pooled"):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.per_block = per_block
        self.loss = LOSSES[loss]
        self.length_groups = length_groups
        self.encoder = encoder
        self.predictor = predictor
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.online, self.regularizer = online, regularizer
        self.reg_weight, self.reg_embeddings = reg_weight, reg_embeddings

    def targets(self, y: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """Target tokens of y (only those at ``at`` (B, K), if given), layer-normed without
        affine parameters (as I-JEPA); with their gradient where the targets are online."""
        if self.online and torch.is_grad_enabled():
            t = self.encoder.tokens(y, at=at)
        else:
            with torch.no_grad():
                t = self.target_encoder.tokens(y, at=at)
        return F.layer_norm(t, t.shape[-1:])

    def forward(self, x: torch.Tensor, y: torch.Tensor, action: torch.Tensor, masks: Masks,
                step: int = 0) -> torch.Tensor:
        """x, y: normalised source and target views (B, 3, H, W); action a_x->y (B, A).
        With ``per_block`` each target block is predicted in its own predictor pass (I-JEPA);
        otherwise the mask tokens of all blocks go through one pass.

        Contexts are padded to the longest; with ``length_groups`` > 1 the samples are sorted by
        context length and run in that many groups, each padded only to its own longest: the
        same loss for less padding (on a CPU, 4 groups of an 8x8-grid batch of 128 save about a
        quarter of the step). ``step`` seeds the regularizer's draws."""
        # one pass: the target encoder runs once for the whole batch, each group takes its rows
        truth = None if self.per_block else self._distinct_truth(y, masks)
        # a moved view's blocks differ in size: the loss is the mean over the batch's real entries
        entries = None if masks.target_valid is None else masks.target_valid.sum().clamp(min=1)
        embeddings: list[torch.Tensor] = []  # what the regularizer sees, group by group
        if self.length_groups > 1 and masks.context_valid is not None:
            order = masks.context_lengths().argsort(stable=True)
            total = x.new_zeros(())
            for idx in order.chunk(self.length_groups):
                part = None if truth is None else _rows(truth, idx)
                share = None if entries is None else entries * len(idx) / x.shape[0]
                total = total + self._loss(x[idx], y[idx], action[idx], masks[idx].trimmed(), part, share,
                                           embeddings) * len(idx)
            prediction = total / x.shape[0]
        else:
            prediction = self._loss(x, y, action, masks, truth, entries, embeddings)
        if self.regularizer is None or not torch.is_grad_enabled():
            return prediction  # measuring (the health checks' loss): the prediction's alone, on one process
        reg = self.regularizer(torch.cat(embeddings), step)
        return (1 - self.reg_weight) * prediction + self.reg_weight * reg

    def _embeddings(self, context: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """The context tokens the regularizer sees: each real one, or their mean per image."""
        if self.reg_embeddings == "tokens":
            return context.flatten(0, 1) if valid is None else context[valid]
        if valid is None:
            return context.mean(1)
        w = valid.unsqueeze(-1).to(context.dtype)
        return (context * w).sum(1) / w.sum(1).clamp(min=1)

    def _distinct_truth(self, y: torch.Tensor, masks: Masks) -> Truth:
        """The patches the target blocks cover, each once, with their counts and target tokens: a
        patch in several blocks is predicted once and its loss counted as often, the same loss as
        with every block's copy in the sequence (see Predictor.forward)."""
        idx, counts = distinct_targets(masks.targets, self.encoder.num_patches, valid=masks.target_valid)
        return idx, counts, self.targets(y, idx)

    def _loss(self, x: torch.Tensor, y: torch.Tensor, action: torch.Tensor, masks: Masks,
              truth: Truth | None = None, entries: torch.Tensor | None = None,
              embeddings: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The loss of some samples; ``entries``: what the sum over their real target entries is
        divided by (None: every entry is real, and it is their number). Their embeddings for the
        regularizer join ``embeddings``."""
        t = masks.targets.shape[1]
        valid = masks.context_valid
        context = self.encoder.tokens(x, masks.context, valid)
        if self.regularizer is not None and embeddings is not None and torch.is_grad_enabled():
            embeddings.append(self._embeddings(context, valid))
        if truth is None:  # per block

            def rep(z: torch.Tensor | None) -> torch.Tensor | None:  # one row per target block
                return None if z is None else z.repeat_interleave(t, 0)

            tidx = masks.targets.flatten(0, 1)
            real = None if masks.target_valid is None else masks.target_valid.flatten(0, 1)
            pred = self.predictor(rep(context), rep(masks.context), tidx, rep(action), rep(valid),
                                  target_counts=None if real is None else real.long())
            truth_tokens = gather_tokens(rep(self.targets(y)), tidx).float()
            if real is None:
                return self.loss(pred.float(), truth_tokens)
            per_token = self.loss(pred.float(), truth_tokens, reduction="none").mean(-1)
            return (per_token * real).sum() / entries
        tidx, counts, tokens = truth
        pred = self.predictor(context, masks.context, tidx, action, valid, target_counts=counts)
        per_token = self.loss(pred.float(), tokens.float(), reduction="none").mean(-1)
        return (per_token * counts).sum() / (masks.targets.numel() if entries is None else entries)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        if self.online:  # no teacher: the target encoder is the encoder, for whatever reads it
            momentum = 0.0
        src = [p.detach() for p in self.encoder.parameters()]
        dst = list(self.target_encoder.parameters())
        torch._foreach_lerp_(dst, src, 1.0 - momentum)
