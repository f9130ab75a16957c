"""Writing files safely: every file iwm writes goes to a temporary file beside its target, is
fsynced and renamed, so a crash or a full disk leaves the old file or the new one, never half."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

DISK_FULL_EXIT_CODE = 4  # the CLI's exit status when a write ran out of space
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


class DiskFullError(OSError):
    """A write ran out of space; its temporary file is gone, the previous file is untouched."""

    def __init__(self, path: Path, need: int | None, partial: int = 0, safe: str = ""):
        super().__init__(errno.ENOSPC, "no space left on device", str(path))
        self.path, self.need, self.partial, self.safe = Path(path), need, partial, safe
        try:
            self.free: int | None = shutil.disk_usage(self.path.parent).free
        except OSError:
            self.free = None

    def __str__(self) -> str:
        need = (f"about {_size(self.need)}" if self.need else
                f"more than the {_size(self.partial)} written" if self.partial else "more than was free")
        free = f", {_size(self.free)} free" if self.free is not None else ""
        name = self.path.name
        safe = self.safe or (f"{name} is unchanged" if self.path.exists() else f"{name} was not created")
        return (f"no space left on device writing {self.path} (it needs {need}{free}); the partial file was "
                f"removed; {safe}")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err``, or an error it wraps, is "no space left" (torch's zip writer wraps the
    OSError in a RuntimeError; safetensors only names it in the message)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL:
            return True
        if "No space left on device" in str(err) or "os error 28" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], need: int | None = None,
                 before_replace: Callable[[], Any] | None = None) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, fsync it, call
    ``before_replace()`` and rename it to ``path``. On any failure the temporary file is removed;
    a full disk raises :class:`DiskFullError` saying how much the write needed (``need`` bytes,
    if known)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the suffix is kept so that writers choosing a format from the name still see it
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as err:
        partial = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception) and is_disk_full(err):
            raise DiskFullError(path, need, partial) from err
        raise
    fsync_dir(path.parent)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data), need=len(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: every figure here goes to a file, and a machine
    without a screen must not fail to draw it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig`` through :func:`atomic_write` (format from the file name)."""
    fmt = Path(path).suffix.lstrip(".") or None
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


def sha256(f: str | Path | IO[bytes]) -> str:
    """The sha256 of a file, given by path or as a binary file object read from where it stands
    (a caller that checks an open file hashes exactly what it then loads)."""
    if isinstance(f, (str, Path)):
        with open(f, "rb") as opened:
            return sha256(opened)
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def source_key(src: Path, length: int) -> str:
    """A short key for a cache made from the file ``src``: a changed, moved or replaced source
    gets another key, so a stale cache is never read."""
    st = src.stat()
    return hashlib.sha1(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:length]


def fsync_dir(d: Path) -> None:
    """Make a rename in ``d`` durable (best effort: not every filesystem allows it)."""
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
