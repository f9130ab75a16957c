"""One training step: the model's inputs made from a batch of crops (views, masks, action), then
forward, backward, the optimizer (a non-finite step skipped) and the EMA target."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from ..actions import ActionSet, move, take
from ..config import Config
from ..data import normalize
from ..masks import MultiBlockMasker
from ..models import IWM
from ..parallel import full_tensor
from ..schedules import ema_momentum, learning_rate, weight_decay

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x, y, a_x->y, masks


class NonFiniteError(FloatingPointError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 1)


class BatchMaker:
    """uint8 crops (this process's slice of the global batch) -> model inputs x, y, a_x->y,
    masks. Parameters and masks are drawn for the whole global batch from the step's generator,
    then sliced, so that every process count sees the same ones."""

    def __init__(self, cfg: Config, rank: int, world: int, device: torch.device):
        self.seed, self.rank, self.world, self.device = cfg.run.seed, rank, world, device
        self.size = cfg.data.image_size
        self.grid = self.size // cfg.model.patch_size
        self.masker = MultiBlockMasker(cfg.mask, self.grid)
        self.actions = ActionSet.from_config(cfg.aug, cfg.data.image_size)

    def __call__(self, crops: torch.Tensor, step: int) -> Batch:
        b = crops.shape[0]
        g = step_generator(self.seed, step)
        glob = b * self.world
        source, target = self.actions.sample_pair(glob, g)
        action = self.actions.encode(source, target)
        masks = self.masker(glob, g, self.actions.support(target, self.grid, self.size))
        sl = slice(self.rank * b, (self.rank + 1) * b)
        # non-blocking: a blocking copy from the host waits for the GPU's queue to drain
        source = move(take(source, sl), self.device, non_blocking=True)
        target = move(take(target, sl), self.device, non_blocking=True)
        masks = masks[sl].to(self.device)
        c = crops.to(self.device, non_blocking=True).float().div_(255.0)
        # the transformations run where the model lives, batched
        x = self.actions.apply(c, source)
        y = self.actions.apply(c, target)
        return normalize(x), normalize(y), action[sl].to(self.device, non_blocking=True), masks


class WeightUpdate:
    """The update of one step: the schedules' lr and weight decay, forward and backward over
    micro-batches, clipping, AdamW (skipped where the loss or gradient is not finite), the EMA
    target. Skipped steps are counted on the device, so that checking them costs no sync a step."""

    def __init__(self, model: IWM, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, cfg: Config, world: int, sharded: bool, device: torch.device):
        self.model, self.net, self.optimizer, self.scaler = model, net, optimizer, scaler
        self.optim, self.world, self.sharded, self.device = cfg.optim, world, sharded, device
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.fused = bool(optimizer.defaults.get("fused"))
        self.skipped = torch.zeros((), device=device)
        self.consecutive = torch.zeros((), device=device)
        self.worst_run = torch.zeros((), device=device)  # longest streak of skipped steps

    def __call__(self, batch: Batch, step: int, total: int, amp_dtype: torch.dtype | None) -> torch.Tensor:
        """The loss of ``batch`` (detached, on the device) after updating the weights with it.
        ``amp_dtype`` is read each step: a benchmark switches it between steps."""
        o = self.optim
        lr, wd = learning_rate(o, step, total), weight_decay(o, step, total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group["apply_wd"]:
                group["weight_decay"] = wd
        loss = self._forward_backward(batch, amp_dtype, step)
        self.scaler.unscale_(self.optimizer)  # a no-op unless fp16
        clip = o.clip_grad if o.clip_grad > 0 else float("inf")
        norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.params, clip))  # sharded: the global norm
        bad = (~torch.isfinite(norm) | ~torch.isfinite(loss.detach())).float()
        if self.scaler.is_enabled():  # fp16: the scaler skips non-finite steps itself
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.fused:  # the fused kernel skips the update where found_inf, with no host sync
            self.optimizer.found_inf = bad
            self.optimizer.step()
        elif not bad.item():  # devices without a fused AdamW (MPS): one scalar sync per step
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += bad
        self.consecutive = (self.consecutive + bad) * bad
        self.worst_run = torch.maximum(self.worst_run, self.consecutive)
        self.model.update_target(ema_momentum(o, step, total))
        return loss.detach()

    def _forward_backward(self, batch: Batch, amp_dtype: torch.dtype | None, step: int = 0) -> torch.Tensor:
        """Gradient accumulation: micro-batches of the same batch, one optimizer step; DDP and
        FSDP reduce gradients on the last micro-batch only."""
        x, y, action, masks = batch
        autocast = torch.autocast(self.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        n = self.optim.accum_steps
        micro = x.shape[0] // n
        loss = torch.zeros((), device=self.device)
        for i in range(n):
            sl = slice(i * micro, (i + 1) * micro)
            sync_now = i == n - 1 or self.world == 1
            if self.sharded:
                self.model.set_requires_gradient_sync(sync_now)
            with autocast, (nullcontext() if sync_now or self.sharded else self.net.no_sync()):
                part = self.net(x[sl], y[sl], action[sl], masks[sl], step=step) / n
            self.scaler.scale(part).backward()
            loss += part.detach()
        return loss

    def too_many_skips(self, max_skips: int, step: int, latest: Path) -> NonFiniteError | None:
        """The error to stop the run with, once more than ``max_skips`` consecutive steps were
        skipped (a sync: called at log steps only); None otherwise."""
        worst = int(self.worst_run.item())
        if worst <= max_skips:
            return None
        return NonFiniteError(
            f"{worst} consecutive steps had a non-finite loss or gradient (run.max_skips={max_skips}), "
            f"{int(self.skipped.item())} in all, last at step {step}; the weights from before the fault are in "
            f"{latest}. Lower optim.lr, set optim.clip_grad, use run.precision=fp32, or check the data.")
