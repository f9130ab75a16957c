"""The package's layers point one way and no package holds an import circle (the import-linter
contracts in pyproject.toml, the map in docs/layers.md)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout


def test_every_module_has_a_layer():
    """A new top-level module must be placed in the layers, or the contract would not see it."""
    import tomllib

    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    package = ROOT / "src" / "iwm"
    modules = {f"iwm.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"iwm.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert modules == placed, f"not in a layer: {sorted(modules - placed)}; gone: {sorted(placed - modules)}"
