"""A run's training state in its checkpoint folder: what a checkpoint holds, writing it (rank 0,
after a collective gather under FSDP) and reading the newest sound one back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..checkpoint import intact_note, load_newest_sound, save_checkpoint
from ..config import Config
from ..models import IWM
from ..parallel import load_model_state, load_optimizer_state, model_state, optimizer_state
from .step import NonFiniteError

Losses = list[tuple[int, float]]
WEIGHTS = ("encoder", "predictor", "target_encoder", "optimizer")  # the parts of a state a NaN would ruin


def non_finite_parts(state: dict[str, Any]) -> list[str]:
    """The parts of a checkpoint's state (``WEIGHTS``) that hold a NaN or an infinity."""
    return [part for part in WEIGHTS if not _finite(state[part])]


def _finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


class Checkpoints:
    """The training state of one run, as this process of ``world`` sees it. The step and the
    losses belong to the loop, which passes them in and takes them back."""

    def __init__(self, ckpt_dir: Path, model: IWM, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, cfg: Config, rank: int, world: int, sharded: bool):
        self.dir, self.model, self.optimizer, self.scaler, self.cfg = ckpt_dir, model, optimizer, scaler, cfg
        self.rank, self.world, self.sharded = rank, world, sharded

    def state_dict(self, step: int, losses: Losses) -> dict[str, Any]:
        return {
            "encoder": model_state(self.model.encoder),
            "predictor": model_state(self.model.predictor),
            "target_encoder": model_state(self.model.target_encoder),
            "optimizer": optimizer_state(self.model, self.optimizer),
            "scaler": self.scaler.state_dict(),
            "step": step,
            "losses": torch.tensor(losses, dtype=torch.float64).reshape(-1, 2),
            "config": self.cfg.to_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def load_state_dict(self, state: dict[str, Any]) -> tuple[int, Losses]:
        """Restore weights, optimizer, scaler and random state; returns the step and the losses."""
        load_model_state(self.model.encoder, state["encoder"], "encoder")
        load_model_state(self.model.predictor, state["predictor"], "predictor")
        load_model_state(self.model.target_encoder, state["target_encoder"], "target encoder")
        load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        losses = [(int(s), float(v)) for s, v in state["losses"].tolist()]
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return step, losses

    def save(self, step: int, losses: Losses, periodic: bool) -> None:
        """Write the state after ``step``; refuse (:class:`NonFiniteError`) weights or optimizer
        state that hold a NaN or an infinity: a finite loss and gradient can still make an update
        overflow (optim.lr=1e39), and such a checkpoint could never resume."""
        # gathering sharded weights is a collective: every process takes part, rank 0 writes
        state = self.state_dict(step, losses) if self.rank == 0 or self.sharded else None
        bad = non_finite_parts(state) if self.rank == 0 else []
        if self.world > 1:  # rank 0 alone holds the full state: it tells the others
            flag = torch.tensor(float(bool(bad)), device=next(self.model.parameters()).device)
            dist.broadcast(flag, 0)
            bad = bad or (["weights"] if flag.item() else [])
        if bad:
            raise NonFiniteError(
                f"after step {step} the {', '.join(bad)} hold NaN or infinite values, so they were not saved; "
                f"{intact_note(self.dir)}. Run again with a lower optim.lr, optim.clip_grad set or "
                "run.precision=fp32 (a run without a checkpoint starts afresh), or check the data.")
        if self.rank == 0:
            save_checkpoint(state, self.dir, step, self.cfg.run.keep, periodic)
        if self.world > 1:
            dist.barrier()

    def newest(self, device: torch.device) -> dict[str, Any] | None:
        """The newest sound checkpoint's state, or None in a fresh run."""
        return load_newest_sound(self.dir, map_location=device)
