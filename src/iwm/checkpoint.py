"""Checkpoints: atomic writes, ``latest`` plus rotated periodic copies, safe loading.

A checkpoint is a plain dict of tensors and numbers, loaded with ``weights_only=True`` so a
file can never run code. Weights for sharing: :mod:`iwm.sharing`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

LATEST = "latest.pt"
_PERIODIC = re.compile(r"^step-(\d+)\.pt$")


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file, fsync, rename: a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(state: dict[str, Any], ckpt_dir: Path, step: int, keep: int, periodic: bool) -> Path:
    """Write ``latest.pt``; if ``periodic``, keep a ``step-N.pt`` copy too, and only the
    newest ``keep`` of those."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    latest = ckpt_dir / LATEST
    atomic_save(state, latest)
    if periodic:
        dst = ckpt_dir / f"step-{step:08d}.pt"
        tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
        try:
            tmp.unlink(missing_ok=True)
            os.link(latest, tmp)  # same bytes, no second write; rename keeps it atomic
            os.replace(tmp, dst)
        except OSError:
            atomic_save(state, dst)
        old = sorted(p for p in ckpt_dir.iterdir() if _PERIODIC.match(p.name))
        for p in old[:-keep]:
            p.unlink(missing_ok=True)
    return latest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load without executing anything from the file (``weights_only``)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot load checkpoint {path}: {str(err).splitlines()[0]}") from err


def check_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse, readably, a state dict whose keys or shapes differ from the model's (``own``)."""
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or shapes:
        lines = [f"the checkpoint's {what} does not fit this model's architecture:"]
        lines += [f"  shape {s}" for s in shapes[:10]]
        if missing:
            lines.append(f"  missing from checkpoint: {', '.join(missing[:10])}")
        if extra:
            lines.append(f"  not in model: {', '.join(extra[:10])}")
        lines.append("  (check model.* and predictor.* against the run's config.yaml)")
        raise ValueError("\n".join(lines))


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict`` with a readable refusal when the architectures differ."""
    check_fits(module.state_dict(), state, what)
    module.load_state_dict(state)


def find_checkpoint(path: str | Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "checkpoints" / LATEST, p / LATEST):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"no checkpoint in {p} (looked for checkpoints/{LATEST})")
    if not p.is_file():
        raise FileNotFoundError(f"no such run or checkpoint: {p}")
    return p

