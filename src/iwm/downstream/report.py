"""Result tables (markdown) and JSON files for the downstream protocols."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import write_text

Column = tuple[str, str, str]  # (row key, header, format spec such as ".4f" or ",d")


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """A markdown table of ``rows`` with the given columns, widths fitted to the contents."""
    cells = [[_cell(r.get(key), spec) for key, _, spec in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"

    return "\n".join([line(heads), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(c) for c in cells])


def write_json(result: Any, path: str | Path) -> Path:
    """Write ``result`` as indented JSON (NaN written as null), creating folders as needed."""
    return write_text(path, json.dumps(_finite(result), indent=2))


def _finite(obj: Any) -> Any:
    # JSON has no NaN: an undefined metric is written as null
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
