"""Schedules as pure functions of the global step, so resume and multi-process runs agree."""

from __future__ import annotations

import math

from .config import OptimConfig


def learning_rate(o: OptimConfig, step: int, total: int) -> float:
    """Linear warm-up from ``start_lr`` to ``lr``, then cosine decay to ``final_lr``."""
    warm = int(o.warmup * total)
    if step < warm:
        return o.start_lr + (o.lr - o.start_lr) * step / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return o.final_lr + 0.5 * (o.lr - o.final_lr) * (1 + math.cos(math.pi * t))


def weight_decay(o: OptimConfig, step: int, total: int) -> float:
    """Cosine from ``weight_decay`` to ``final_weight_decay`` (I-JEPA raises it over the run)."""
    t = min(1.0, step / max(1, total))
    return o.final_weight_decay + 0.5 * (o.weight_decay - o.final_weight_decay) * (1 + math.cos(math.pi * t))


def ema_momentum(o: OptimConfig, step: int, total: int) -> float:
    """Linear from ``ema[0]`` to ``ema[1]``."""
    t = min(1.0, step / max(1, total))
    return o.ema[0] + (o.ema[1] - o.ema[0]) * t
