"""Checkpoints: atomic writes with a sha256 beside each file and another inside it, ``latest``
plus rotated periodic copies, verified loading, and loading the newest sound one.

A checkpoint is a plain dict of tensors and numbers, loaded with ``weights_only=True`` so a
file can never run code. Weights for sharing: :mod:`iwm.sharing`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
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
# A checkpoint also carries its sha256 inside, as the comment its zip archive may end with
# (readers of the archive skip it), so that it is verified when its side file is lost.
_EOCD = b"PK\x05\x06"  # the zip's end record: 22 bytes, the last two the comment's length
_EOCD_SIZE = 22
_SEAL = b"iwm-sha256:"
_SEAL_SIZE = len(_SEAL) + 64


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, truncated, or not a plain checkpoint."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


def _refuse(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"cannot load checkpoint {path}: {reason}", reason)


def refusal(path: str | Path, err: Exception) -> CheckpointError:
    """The one-line error for a file ``torch.load`` failed on. Its refusal of a pickle that
    would run code spans a page and suggests turning the check off: said here in a line."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError):
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", text)
        detail = f" ({found.group(1).strip()})" if found else ""
        return _refuse(Path(path), f"not a plain checkpoint of tensors{detail}; iwm loads only tensors and plain "
                                   "containers, never code from a file")
    return _refuse(Path(path), text.splitlines()[0] if text.strip() else type(err).__name__)


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


class _Sealing:
    """Passes torch.save's zip archive on, hashing it and holding back its last 22 bytes (the
    end record, whose comment length is 0 as written); :meth:`seal` then ends the archive with
    the sha256 of everything before the comment's length as its comment."""

    def __init__(self, f):
        self.f, self.sha, self.held = f, hashlib.sha256(), b""

    def _pass(self, data) -> None:
        if len(data):
            self.f.write(data)
            self.sha.update(data)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if n >= _EOCD_SIZE:  # large writes (tensor storages) pass without a copy
            self._pass(self.held)
            self._pass(view[:n - _EOCD_SIZE])
            self.held = bytes(view[n - _EOCD_SIZE:])
        else:
            joined = self.held + bytes(view)
            cut = max(0, len(joined) - _EOCD_SIZE)
            self._pass(joined[:cut])
            self.held = joined[cut:]
        return n

    def flush(self) -> None:
        self.f.flush()

    def seal(self) -> None:
        end = self.held
        if len(end) != _EOCD_SIZE or not end.startswith(_EOCD) or end[-2:] != b"\0\0":
            log.warning("torch.save wrote no plain zip end record: this checkpoint carries no sha256 inside")
            self._pass(end)
            return
        self._pass(end[:-2])
        comment = _SEAL + self.sha.hexdigest().encode()
        self.f.write(len(comment).to_bytes(2, "little") + comment)


def _sealed(f, write: Callable[[Any], Any]) -> None:
    """``write(stream)`` of a zip archive into ``f``, ended with its sha256 (:class:`_Sealing`)."""
    sealing = _Sealing(f)
    write(sealing)
    sealing.seal()


def _sealed_sha256(f, size: int) -> str | None:
    """The sha256 the open file carries (:class:`_Sealing`); None when it carries none (written
    before checkpoints carried one, or not by iwm). ValueError when its end is damaged."""
    tail_size = _EOCD_SIZE + _SEAL_SIZE
    f.seek(max(0, size - tail_size))
    tail = f.read(tail_size)
    if tail[-_EOCD_SIZE:].startswith(_EOCD) and tail.endswith(b"\0\0"):
        return None  # an archive without a comment
    if len(tail) < tail_size or not tail.startswith(_EOCD):
        return None  # not a zip archive of iwm's; loading judges it
    if tail[_EOCD_SIZE - 2:_EOCD_SIZE] != _SEAL_SIZE.to_bytes(2, "little") or not tail[_EOCD_SIZE:].startswith(_SEAL):
        raise ValueError("the sha256 it carries at its end is damaged")
    return tail[_EOCD_SIZE + len(_SEAL):].decode("ascii", "replace")


def _sha256_of_start(f, n: int) -> str:
    """The sha256 of the first ``n`` bytes of the open file."""
    f.seek(0)
    h = hashlib.sha256()
    while n > 0 and (chunk := f.read(min(n, 1 << 20))):
        h.update(chunk)
        n -= len(chunk)
    return h.hexdigest()


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
    file or the new one, each with its checksum beside it and inside it."""
    need = _tensor_bytes(obj) + (1 << 16)  # the format's overhead, the sha256 inside included
    if path.is_file():  # the file it replaces is the best estimate (the format adds a little per tensor)
        need = max(need, path.stat().st_size)
    return write_checked(path, lambda f: _sealed(f, lambda zipped: torch.save(obj, zipped)), need, step)


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
    its records; without them (the side file lost), against the sha256 it carries inside. A
    file with neither (from before checksums) is judged by loading, so that old runs still load."""
    size = os.fstat(f.fileno()).st_size
    unreadable = None
    try:
        recs = _records(path)
    except (OSError, ValueError) as err:
        recs, unreadable = [], f"its checksum file is unreadable ({err})"
    if not recs:
        try:
            carried = _sealed_sha256(f, size)
        except ValueError as err:
            return f"damaged: {err}"
        if carried is None:
            return unreadable
        if _sha256_of_start(f, size - 2 - _SEAL_SIZE) != carried:
            return "damaged: its sha256 differs from the one it carries"
        return None
    same_size = {r["sha256"] for r in recs if r["bytes"] == size}
    if not same_size:
        want = recs[0]["bytes"]
        return f"{'truncated' if size < want else 'wrong size'}: {size:,} bytes of {want:,}"
    if files.sha256(f) not in same_size:
        return f"damaged: its sha256 differs from the one in {sidecar(path).name}"
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify against the recorded sha256 (or, its side file lost, the one the file carries),
    then load without executing anything from the file (``weights_only``). Raises
    :class:`CheckpointError` with the reason, in one line."""
    path = Path(path)
    try:
        # the file is opened before its records are read: a writer lists a file before renaming it
        with open(path, "rb") as f:
            reason = _damage(f, path)
            if reason is None:
                f.seek(0)
                return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as err:
        raise refusal(path, err) from err
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
    state, used, skipped = _first_sound(cands, map_location, "move the run directory away to start afresh",
                                        lambda p, err: log.warning("skipping checkpoint %s: %s", p, err.reason))
    if skipped:
        log.warning("resuming from %s (step %d)", used, int(state["step"]))
    return state


def load_run_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """A run's ``latest.pt`` for reading, else, when it is damaged, the newest sound periodic
    copy beside it, as a resumed run would take; one warning names both. Any other file is
    loaded as it is. Returns (state, the file read). Removes nothing: a reader may run beside
    the run's writer."""
    if path.name != LATEST:
        return load_checkpoint(path, map_location), path
    cands = [path, *(p for p in reversed(periodic_copies(path.parent)) if p.is_file())]
    state, used, skipped = _first_sound(cands, map_location, "", lambda p, err: None)
    if skipped:
        log.warning("%s: skipped %s; reading %s (step %d), the newest sound checkpoint", path.parent,
                    "; ".join(skipped), used.name, int(state["step"]))
    return state, used


def _first_sound(cands: list[Path], map_location: str | torch.device, hint: str,
                 skip: Callable[[Path, CheckpointError], Any]) -> tuple[dict[str, Any], Path, list[str]]:
    """The first of ``cands`` that loads: (state, its path, the files skipped, with why)."""
    skipped = []
    for p in cands:
        try:
            return load_checkpoint(p, map_location), p, skipped
        except CheckpointError as err:
            skip(p, err)
            skipped.append(f"{p.name} ({err.reason})")
    raise CheckpointError(f"no sound checkpoint in {cands[0].parent}: {'; '.join(skipped)}. Restore one from a "
                          f"copy{', or ' + hint if hint else ''}")


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

