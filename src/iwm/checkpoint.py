"""Checkpoints: atomic writes with a sha256 beside each file, ``latest`` plus rotated periodic
copies, verified loading, and resuming from the newest sound one.

A checkpoint is a plain dict of tensors and numbers, loaded with ``weights_only=True`` so a
file can never run code. Weights for sharing: :mod:`iwm.sharing`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import files

log = logging.getLogger(__name__)

LATEST = "latest.pt"
_PERIODIC = re.compile(r"^step-(\d+)\.pt$")
_TEMP = re.compile(r"^\..+\.tmp\d+")  # what files.atomic_write leaves behind when killed mid-write


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, truncated, or not a plain checkpoint."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


def _refuse(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"cannot load checkpoint {path}: {reason}", reason)


def sidecar(path: Path) -> Path:
    """``latest.pt`` -> ``latest.pt.json``: the step, size and sha256 of the file, newest first,
    with those of the two files it replaced (see :func:`write_checked`)."""
    return path.with_name(path.name + ".json")


def _records(path: Path) -> list[dict[str, Any]]:
    """The records of ``<file>.json`` ([] when there is none); ValueError when unreadable."""
    try:
        recs = json.loads(sidecar(path).read_text())
    except FileNotFoundError:
        return []
    if not (isinstance(recs, list) and all(isinstance(r, dict) and {"bytes", "sha256"} <= set(r) for r in recs)):
        raise ValueError(f"{sidecar(path).name} is not a list of checkpoint records")
    return recs


class _Hashing:
    """A write-only stream that hashes what passes through, so the checksum costs no re-read."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        n = self.f.write(data)
        self.sha.update(data)
        self.size += len(memoryview(data))
        return n

    def flush(self) -> None:
        self.f.flush()


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def write_checked(path: Path, write: Callable[[Any], Any], need: int, step: int | None,
                  known: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`files.atomic_write` that also records the new file's step, size and sha256 in
    ``<file>.json`` (``known``: the record of a file being copied, not hashed again). The record
    is written before the rename and keeps the records before it, so the file in place is always
    listed: a reader never sees a file without its record, and a kill between the two writes
    leaves both sound. Returns the record."""
    hashing: list[_Hashing] = []
    done: list[dict[str, Any]] = []

    def hashed(f) -> None:
        hashing.append(_Hashing(f))
        write(hashing[-1])

    def record() -> None:
        try:
            older = _records(path)[:2]
        except ValueError:
            older = []
        h = hashing[-1] if hashing else None
        done.append(known or {"step": step, "bytes": h.size, "sha256": h.sha.hexdigest()})
        files.write_text(sidecar(path), json.dumps([done[-1], *older]) + "\n")

    files.atomic_write(path, write if known else hashed, need=need, before_replace=record)
    return done[-1]


def atomic_save(obj: Any, path: Path, step: int | None = None) -> dict[str, Any]:
    """``torch.save`` through :func:`write_checked`: a crash or a full disk leaves the old
    file or the new one, each with its checksum."""
    need = _tensor_bytes(obj) + (1 << 16)
    if path.is_file():  # the file it replaces is the best estimate (the format adds a little per tensor)
        need = max(need, path.stat().st_size)
    return write_checked(path, lambda f: torch.save(obj, f), need, step)


def periodic_copies(ckpt_dir: Path) -> list[Path]:
    """The ``step-N.pt`` copies, oldest first."""
    return sorted(p for p in ckpt_dir.iterdir() if _PERIODIC.match(p.name)) if ckpt_dir.is_dir() else []


def save_checkpoint(state: dict[str, Any], ckpt_dir: Path, step: int, keep: int, periodic: bool) -> Path:
    """Write ``latest.pt``; if ``periodic``, a ``step-N.pt`` copy too, keeping the newest
    ``keep`` of those. The copy is a second file, not a link, so that damage to one is not
    damage to both. A full disk raises :class:`files.DiskFullError` naming the newest intact
    checkpoint."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    latest = ckpt_dir / LATEST
    try:
        rec = atomic_save(state, latest, step)
        if periodic:
            with open(latest, "rb") as src:
                write_checked(ckpt_dir / f"step-{step:08d}.pt", lambda f: shutil.copyfileobj(src, f, 1 << 20),
                              rec["bytes"], step, known=rec)
    except files.DiskFullError as err:
        err.safe = intact_note(ckpt_dir)
        raise
    if periodic:
        for p in periodic_copies(ckpt_dir)[:-keep]:
            p.unlink(missing_ok=True)
            sidecar(p).unlink(missing_ok=True)
    return latest


def intact_note(ckpt_dir: Path) -> str:
    """Which checkpoint a failed write left intact: the newest whose size is that of its record."""
    best: tuple[int, bool, Path] | None = None
    for p in [ckpt_dir / LATEST, *periodic_copies(ckpt_dir)]:
        try:
            rec = _records(p)[0]
            if p.stat().st_size == rec["bytes"] and rec.get("step") is not None:
                cand = (int(rec["step"]), p.name != LATEST, p)  # on a tie, name the periodic copy
                best = cand if best is None or cand[:2] > best[:2] else best
        except (OSError, ValueError, IndexError):
            continue
    if best is None:
        return "no checkpoint of this run had been written yet"
    return f"{best[2]} (step {best[0]}) is intact"


def _damage(f, path: Path) -> str | None:
    """Why the open file ``f`` (at ``path``) is damaged, or None: its size and sha256 against
    its records. A file without records (runs from before checksums) is judged by loading."""
    try:
        recs = _records(path)
    except (OSError, ValueError) as err:
        return f"its checksum file is unreadable ({err})"
    if not recs:
        return None
    size = os.fstat(f.fileno()).st_size
    same_size = {r["sha256"] for r in recs if r["bytes"] == size}
    if not same_size:
        want = recs[0]["bytes"]
        return f"{'truncated' if size < want else 'wrong size'}: {size:,} bytes of {want:,}"
    if files.sha256(f) not in same_size:
        return f"damaged: its sha256 differs from the one in {sidecar(path).name}"
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify against the recorded sha256, then load without executing anything from the file
    (``weights_only``). Raises :class:`CheckpointError` with the reason."""
    path = Path(path)
    try:
        # the file is opened before its records are read: a writer lists a file before renaming it
        with open(path, "rb") as f:
            reason = _damage(f, path)
            if reason is None:
                f.seek(0)
                return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as err:
        raise _refuse(path, str(err).splitlines()[0]) from err
    raise _refuse(path, reason)


def load_newest_sound(ckpt_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The state to resume from: ``latest.pt``, else the periodic copies newest first. Each file
    skipped is named in a warning with the reason; None when there is no checkpoint at all.
    Also removes temporary files a killed writer left (the caller holds the run's lock)."""
    for p in ckpt_dir.iterdir() if ckpt_dir.is_dir() else ():
        if _TEMP.match(p.name):
            p.unlink(missing_ok=True)
    cands = [p for p in (ckpt_dir / LATEST, *reversed(periodic_copies(ckpt_dir))) if p.is_file()]
    if not cands:
        return None
    skipped = []
    for p in cands:
        try:
            state = load_checkpoint(p, map_location)
        except CheckpointError as err:
            log.warning("skipping checkpoint %s: %s", p, err.reason)
            skipped.append(f"{p.name} ({err.reason})")
            continue
        if skipped:
            log.warning("resuming from %s (step %d)", p, int(state["step"]))
        return state
    raise CheckpointError(f"no sound checkpoint in {ckpt_dir}: {'; '.join(skipped)}. Restore one from a copy, "
                          "or move the run directory away to start afresh")


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

