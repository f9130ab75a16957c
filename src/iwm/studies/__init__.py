"""Studies that train a grid of runs with the shipped configs and measure them into a results
page: ``world_model`` (the paper's Tables 1-2), ``leverage`` (Table 8, Figures 4-5),
``recipe`` (short CPU runs, one change each) and ``reference`` (the long reference models).
Runs are shared through :mod:`.grid`, so a run two studies name is trained once."""

from __future__ import annotations

import argparse


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``iwm study {world-model,leverage,recipe,reference}``."""
    from . import leverage, recipe, reference, world_model

    p = subparsers.add_parser("study", help="studies that train and measure a grid of runs")
    studies = p.add_subparsers(dest="study", required=True)
    world_model.add_cli(studies)
    leverage.add_cli(studies)
    recipe.add_cli(studies)
    reference.add_cli(studies)
