#!/usr/bin/env bash
# Create .venv (once) and install the pinned dependencies and iwm itself into it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.iwm-installed
if [[ ! -f $stamp || requirements.txt -nt $stamp || pyproject.toml -nt $stamp ]]; then
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps -e .
  touch "$stamp"
fi
