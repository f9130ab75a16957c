"""Pretraining: the loop (``loop``) and the units it drives, each a module of its own: what a run
is built from (``build``, ``parts``), the step (``step``), checkpoints (``checkpoints``), what a
run reports (``records``) and stop signals (``signals``). The names below are the package's API."""

from .build import (CPU_HEALTH_MAX_SIZE, CPU_HEALTH_SIZES, build_model, build_optimizer, describe_precision,
                    dist_info, half_on_cpu_warning, health_config, resolve_device, resolve_precision)
from .loop import Trainer, TrainResult, pretrain
from .records import plot_losses
from .signals import PREEMPTED_EXIT_CODE, STOP_SIGNALS, Preempted, StopSignals, ignore_stop_signals
from .step import NonFiniteError, step_generator

__all__ = [
    "CPU_HEALTH_MAX_SIZE", "CPU_HEALTH_SIZES", "NonFiniteError", "PREEMPTED_EXIT_CODE", "Preempted", "STOP_SIGNALS",
    "StopSignals", "TrainResult", "Trainer", "build_model", "build_optimizer", "describe_precision", "dist_info",
    "half_on_cpu_warning", "health_config", "ignore_stop_signals", "plot_losses", "pretrain", "resolve_device",
    "resolve_precision", "step_generator",
]
