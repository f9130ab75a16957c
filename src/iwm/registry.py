"""The models shipped inside the package (``iwm.pretrained(NAME)``, ``pretrained:NAME``):
one folder of shared weights each (fp16) under ``iwm/weights/``, listed in ``manifest.json``
with the sha256 of its files, the commit that shipped it, its config and measured scores."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from . import sharing
from .config import ConfigError
from .files import sha256, write_text

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"
ROOT_ENV = "IWM_WEIGHTS_DIR"  # another registry folder (tests; a private set of models)
MANIFEST = "manifest.json"
# the reference models the project ships (each has a torch.hub entry in hubconf.py)
REFERENCE_MODELS = ("cifar10_equi", "cifar10_equi_strong", "cifar10_equi_deep", "cifar10_equi_deep_jitter15",
                    "cifar10_inv", "cifar10_ijepa")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a Python identifier too: it names a torch.hub entry


def registry_root(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get(ROOT_ENV) or PACKAGE_WEIGHTS)


def manifest(root: str | Path | None = None) -> dict[str, Any]:
    f = registry_root(root) / MANIFEST
    if not f.is_file():
        return {"models": {}}
    try:
        data = json.loads(f.read_text())
    except ValueError as err:
        raise sharing.WeightsError(f"{f} is not valid JSON ({err})") from None
    data.setdefault("models", {})
    return data


def shipped_names(root: str | Path | None = None) -> list[str]:
    return sorted(manifest(root)["models"])


def shipped_folder(name: str, root: str | Path | None = None) -> Path:
    """The folder of a shipped model, after checking its files against the manifest."""
    entry = manifest(root)["models"].get(name)
    if entry is None:
        names = ", ".join(shipped_names(root)) or "none yet"
        raise FileNotFoundError(f"pretrained:{name}: no shipped model of that name (shipped: {names})")
    folder = registry_root(root) / entry["folder"]
    for file, digest in entry["files"].items():
        f = folder / file
        if not f.is_file() or sha256(f) != digest:
            raise sharing.WeightsError(f"pretrained:{name}: {f} is missing or does not match the manifest's "
                                       "sha256; reinstall iwm (or ship the model again)")
    return folder


def ship(run, name: str, root: str | Path | None = None) -> dict[str, Any]:
    """Write ``run`` (a :class:`iwm.Run`) as shipped model ``name``: its folder in fp16 and its
    manifest entry (sha256 of each file, commit, step, config, the scores measured in the run's
    directory). Returns the entry."""
    from .version import code_version

    if not _NAME.match(name):
        raise ConfigError(f"model name {name!r}: use lower-case letters, digits and _ (it names a torch.hub entry)")
    root = registry_root(root)
    folder = run.save_pretrained(root / name, dtype=torch.float16)
    meta = sharing.read_meta(folder)
    files = [sharing.CONFIG, *(sharing.weight_file(n) for n in sharing.NETWORKS)]
    entry = {"folder": name, "files": {f: sha256(folder / f) for f in files}, "commit": code_version(),
             "step": meta["step"], "dtype": "float16", "license": meta["license"], "scores": meta["scores"],
             "config": meta["config"]}
    data = manifest(root)
    data["models"][name] = entry
    data["models"] = dict(sorted(data["models"].items()))
    _write_manifest(data, root)
    return entry


def _write_manifest(data: dict[str, Any], root: str | Path | None = None) -> None:
    write_text(registry_root(root) / MANIFEST, json.dumps(data, indent=2) + "\n")


def update_scores(name: str, scores: dict[str, float], root: str | Path | None = None) -> dict[str, Any]:
    """Record newly measured ``scores`` of shipped model ``name`` (merged over those it has),
    in its ``config.json``, its model card and its manifest entry, whose sha256 follow; the
    weights, step and shipping commit stay. Returns the entry."""
    folder = shipped_folder(name, root)  # checks the files first: never re-hash a damaged folder
    meta = sharing.read_meta(folder)
    meta["scores"] = dict(sorted({**meta.get("scores", {}), **scores}.items()))
    sharing.write_meta(folder, meta, name)
    data = manifest(root)
    entry = data["models"][name]
    entry["scores"] = meta["scores"]
    entry["files"][sharing.CONFIG] = sha256(folder / sharing.CONFIG)
    _write_manifest(data, root)
    return entry
