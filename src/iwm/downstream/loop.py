"""The training loop every downstream protocol shares: AdamW, the learning rate of
:func:`iwm.schedules.warmup_cosine` (linear warm-up from 0, then cosine decay to 0), bf16
autocast on CUDA, an optional progress bar, and seeded data order.

Each protocol supplies a loss function of one batch and a callable that yields the batches of
an epoch; this module owns the optimizer and the schedule, so the protocols differ only in
what they train, never in how.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..schedules import warmup_cosine


@dataclass
class FitLog:
    steps: int
    seconds: float  # wall time of the whole fit
    epoch_losses: list[float] = field(default_factory=list)  # mean training loss per epoch

    @property
    def final_loss(self) -> float:
        return self.epoch_losses[-1] if self.epoch_losses else float("nan")

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(1, len(self.epoch_losses))


def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters that require gradients, each once (shared tensors are not counted twice)."""
    seen: set[int] = set()
    out = []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def check_choices(picked: Iterable[str], allowed: Iterable[str], what: str) -> None:
    """Refuse the first of ``picked`` that is not in ``allowed``, naming the choices."""
    allowed = tuple(allowed)
    for p in picked:
        if p not in allowed:
            raise ValueError(f"unknown {what} {p!r}; choose from {', '.join(allowed)}")


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in trainable(module.parameters()))


LrScales = Sequence[tuple[Iterable[nn.Parameter], float]]  # (parameters, multiple of the scheduled lr)


def make_optimizer(params: Iterable[nn.Parameter], lr: float, weight_decay: float,
                   lr_scales: LrScales = ()) -> torch.optim.AdamW:
    """AdamW; biases and norm weights (1-d tensors) get no weight decay, as in pretraining.
    The parameters named in ``lr_scales`` train at their multiple of the scheduled learning
    rate (their groups' ``lr_scale``); every other one at 1x."""
    params = trainable(params)
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    scale_of = {id(p): float(s) for ps, s in lr_scales for p in ps}
    scales = list(dict.fromkeys([1.0, *scale_of.values()]))
    groups = []
    for scale in scales:
        mine = [p for p in params if scale_of.get(id(p), 1.0) == scale]
        groups += [{"params": [p for p in mine if p.ndim > 1], "weight_decay": weight_decay, "lr_scale": scale},
                   {"params": [p for p in mine if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def autocast(device: torch.device | str) -> Any:
    """bf16 autocast on CUDA (where it is fast and safe without a scaler), full fp32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # the data order depends on (seed, epoch) only, never on the global RNG's history
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def index_batches(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = False) -> list[torch.Tensor]:
    """A seeded shuffle of range(n) cut into batches (for tensors held in memory)."""
    perm = torch.randperm(n, generator=epoch_generator(seed, epoch))
    batches = list(perm.split(batch_size))
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    return max(1, n // batch_size) if drop_last else math.ceil(n / batch_size)


def epoch_loader(ds: Dataset, batch_size: int, seed: int, epoch: int, num_workers: int = 0,
                 shuffle: bool = True, drop_last: bool = False, collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader whose order and augmentations depend on (seed, epoch) only."""
    base = getattr(ds, "dataset", ds)  # a Subset: the views are drawn by the dataset below it
    if hasattr(base, "set_epoch"):
        base.set_epoch(epoch)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=epoch_generator(seed, epoch) if shuffle else None,
                      drop_last=drop_last and len(ds) > batch_size, collate_fn=collate_fn)


def fit(module: nn.Module, loss_fn: Callable[[Any], torch.Tensor], batches: Callable[[int], Iterable[Any]],
        epochs: int, steps_per_epoch: int, lr: float, weight_decay: float, warmup: float = 0.1,
        clip_grad: float = 0.0, progress: bool = False, desc: str = "train", lr_scales: LrScales = ()) -> FitLog:
    """Train the trainable parameters of ``module`` to minimise ``loss_fn`` over ``batches(epoch)``.

    The schedule spans ``epochs * steps_per_epoch`` steps; ``warmup`` is a fraction of them.
    ``lr`` is the peak learning rate; the parameters in ``lr_scales`` get their multiple of it
    at every step (see :func:`make_optimizer`).
    ``module.train()`` is called first: modules that hold frozen parts keep those in eval mode
    by overriding ``train``."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    opt = make_optimizer(module.parameters(), lr, weight_decay, lr_scales)
    params = [p for g in opt.param_groups for p in g["params"]]
    device = params[0].device
    total = epochs * steps_per_epoch
    module.train()
    bar = _bar(total, desc, progress)
    log = FitLog(steps=0, seconds=0.0)
    start = time.perf_counter()
    for epoch in range(epochs):
        running, count = torch.zeros((), device=device), 0
        for batch in _limited(batches(epoch), steps_per_epoch):
            scheduled = warmup_cosine(log.steps, total, lr, warmup)  # 0 at step 0, as in MAE
            for g in opt.param_groups:
                g["lr"] = scheduled * g["lr_scale"]
            with autocast(device):
                loss = loss_fn(batch)
            loss.backward()
            if clip_grad > 0:
                nn.utils.clip_grad_norm_(params, clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            running += loss.detach().float()
            count += 1
            log.steps += 1
            if bar is not None:
                bar.update(1)
                if count % 10 == 1:  # reading the loss syncs the device: not every step
                    bar.set_postfix(loss=f"{running.item() / count:.4f}", epoch=epoch)
        log.epoch_losses.append(running.item() / max(1, count))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    log.seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    module.eval()
    return log


def _limited(it: Iterable[Any], n: int) -> Iterator[Any]:
    # never run past the schedule, even if an epoch yields more batches than announced
    for k, batch in enumerate(it):
        if k >= n:
            return
        yield batch


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
