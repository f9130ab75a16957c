"""Figures of a trained run."""

from .retrieval import retrieval_figure

__all__ = ["retrieval_figure"]
