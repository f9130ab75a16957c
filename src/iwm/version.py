"""What code this is: the package version and, in a git checkout, the commit. A results page, a
checkpoint or a shipped model says what produced it."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def code_version() -> str:
    """The git commit of the code that ran (with -dirty for local changes), or the package
    version outside a git checkout: a results page says what produced it."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return f"git {out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"iwm {__version__}"
