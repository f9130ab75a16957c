"""Figures of a trained run."""

from .retrieval import describe_action, retrieval_figure

__all__ = ["describe_action", "retrieval_figure"]
