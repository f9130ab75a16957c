"""Figures of a trained run."""

from .retrieval import add_cli, describe_action, retrieval_figure

__all__ = ["add_cli", "describe_action", "retrieval_figure"]
