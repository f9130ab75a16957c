"""Schedules as pure functions of the global step, so resume and multi-process runs agree.
Pretraining and every downstream protocol take their learning rate from :func:`warmup_cosine`."""

from __future__ import annotations

import math

from .config import OptimConfig


def warmup_cosine(step: int, total: int, peak: float, warmup: float, start: float = 0.0,
                  final: float = 0.0) -> float:
    """Linear warm-up from ``start`` to ``peak`` over the first ``warmup`` fraction of ``total``
    steps, then cosine decay to ``final`` at step ``total``."""
    warm = int(warmup * total)
    if step < warm:
        return start + (peak - start) * step / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * t))


def learning_rate(o: OptimConfig, step: int, total: int) -> float:
    """Linear warm-up from ``start_lr`` to ``lr``, then cosine decay to ``final_lr``."""
    return warmup_cosine(step, total, o.lr, o.warmup, o.start_lr, o.final_lr)


def weight_decay(o: OptimConfig, step: int, total: int) -> float:
    """Cosine from ``weight_decay`` to ``final_weight_decay`` (I-JEPA raises it over the run)."""
    t = min(1.0, step / max(1, total))
    return o.final_weight_decay + 0.5 * (o.weight_decay - o.final_weight_decay) * (1 + math.cos(math.pi * t))


def ema_momentum(o: OptimConfig, step: int, total: int) -> float:
    """Linear from ``ema[0]`` to ``ema[1]``."""
    t = min(1.0, step / max(1, total))
    return o.ema[0] + (o.ema[1] - o.ema[0]) * t
