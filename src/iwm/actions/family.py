"""What an action family is: one kind of transformation between the two views, which the world
model learns to apply.

A family transforms batches of float images in [0, 1], (B, 3, H, W), with per-sample parameters
(a ``dict`` of tensors with leading size B). It:

- draws parameters for one view of a batch from a seeded generator (:meth:`ActionFamily.sample`),
  so a step's transformation is replayable and a resumed run sees the same one;
- applies them on whatever device the images are on (:meth:`ActionFamily.apply`);
- gives the identity parameters (:meth:`ActionFamily.identity`);
- encodes a_x->y, from the source's and the target's parameters, as ``len(values)`` numbers
  (:meth:`ActionFamily.encode`); the identity pair encodes as zeros.

``views`` says which view the family transforms in training: ``source`` (x only: what the
world model must undo, as grayscale), ``target`` (y only: what it must apply, as the
geometric families) or ``both`` (independently, the action carries the difference: the colour
jitter). A ``geometric`` family moves pixels; it transforms the target only, and says where
each target pixel comes from, given a_x->y (:meth:`ActionFamily.to_source`), so that the
context is kept free of the target blocks' pixels and the predictor can place its queries.

A new family is a subclass registered by name::

    @register
    class Posterize(ActionFamily):
        name, values, views = "posterize", ("bits_removed",), "source"
        ...

and a run learns it once ``aug.families`` lists its name (or ``module:Posterize``, which the
command line and every later reader of the run can import).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, ClassVar

import torch

from ..config import AugConfig, ConfigError

Params = dict[str, torch.Tensor]  # per-sample parameters of one family for one view; leading size B
VIEWS = ("source", "target", "both")


class ActionFamily:
    """Base class of the action families (see the module docstring)."""

    name: ClassVar[str] = ""
    values: ClassVar[tuple[str, ...]] = ()  # names of the numbers a_x->y holds for this family
    views: ClassVar[str] = "source"
    geometric: ClassVar[bool] = False

    @classmethod
    def from_config(cls, aug: AugConfig, image_size: int) -> "ActionFamily":
        """The family as a run's config sets it up; a family with no settings needs no override."""
        return cls()

    @property
    def dim(self) -> int:
        return len(self.values)

    def sample(self, batch: int, generator: torch.Generator, view: str, always: bool = False) -> Params:
        """Parameters of ``view`` (``source`` or ``target``) for a batch, drawn from ``generator``.
        A family returns the identity for a view it does not transform. ``always``: every sample
        is transformed, where the family can (the MRR bank, whose entries must differ, and the
        evaluation of one family at a time)."""
        raise NotImplementedError

    def identity(self, batch: int, device: torch.device | str = "cpu") -> Params:
        """Parameters that leave every image unchanged."""
        raise NotImplementedError

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """Float images in [0, 1], (B, 3, H, W) -> the transformed images (a new tensor)."""
        raise NotImplementedError

    def encode(self, source: Params, target: Params) -> torch.Tensor:
        """a_x->y for this family, (B, dim) float32, from the source's and the target's parameters."""
        raise NotImplementedError

    def activate(self, params: Params, view: str) -> Params:
        """``params`` made to transform every sample of ``view`` (a flag forced on), for the
        evaluation of one family at a time; a family whose draws always transform keeps them."""
        return params

    def to_source(self, action: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Geometric families: points (B, P, 2) as (x, y) in y's normalised coordinates ([-1, 1],
        ``grid_sample``'s) -> where they come from in x, as this family's part of a_x->y, (B, dim),
        says (the predictor reads the move from the action alone)."""
        raise NotImplementedError(f"{self.name} is not geometric")

    def describe(self, action: torch.Tensor) -> str:
        """This family's part of one a_x->y, (dim,), in words (the retrieval pictures)."""
        return f"{self.name} " + " ".join(f"{n}{float(v):+.2f}" for n, v in zip(self.values, action))


_REGISTRY: dict[str, Callable[[AugConfig, int], ActionFamily]] = {}


def register(cls: type[ActionFamily]) -> type[ActionFamily]:
    """Make ``cls`` available to ``aug.families`` under ``cls.name`` (a class decorator). A name
    registered again is replaced: re-running a notebook cell must not fail."""
    if not (isinstance(cls, type) and issubclass(cls, ActionFamily)):
        raise TypeError(f"register takes an ActionFamily subclass, got {cls!r}")
    if not cls.name or not cls.values or cls.views not in VIEWS:
        raise TypeError(f"{cls.__name__}: an action family needs a name, at least one value and views in "
                        f"{', '.join(VIEWS)}")
    if cls.geometric and cls.views != "target":
        raise TypeError(f"{cls.__name__}: a geometric family transforms the target view only (views = 'target')")
    _REGISTRY[cls.name] = cls.from_config
    return cls


def known_families() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def build_family(name: str, aug: AugConfig, image_size: int) -> ActionFamily:
    """The family ``name`` of ``aug.families``: a registered name, or ``module:Class`` (a
    subclass importable from the working directory or the path, registered on import), which
    lets the command line and every later reader of the run build it too."""
    if ":" in name:
        return _import_family(name)(aug, image_size)
    if name not in _REGISTRY:
        raise ConfigError(f"aug.families: {name!r} is not a known action family; choose from "
                          f"{', '.join(_REGISTRY)}, name yours as module:Class, or register it "
                          "(iwm.actions.register) before the run starts")
    return _REGISTRY[name](aug, image_size)


def _import_family(spec: str) -> Callable[[AugConfig, int], ActionFamily]:
    module, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # a family written beside the user's configs
        sys.path.append(os.getcwd())
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"aug.families: cannot import {spec!r} ({err}); write it as module:Class, the module "
                          "importable from the working directory") from None
    if not (isinstance(cls, type) and issubclass(cls, ActionFamily)):
        raise ConfigError(f"aug.families: {spec!r} is not an iwm.actions.ActionFamily subclass")
    try:
        register(cls)
    except TypeError as err:
        raise ConfigError(f"aug.families: {err}") from None
    return cls.from_config


# ----------------------------------------------------------------------------------------------
# helpers for families' parameters


def coin(p: float, batch: int, g: torch.Generator) -> torch.Tensor:
    """(batch,) bool, True with probability ``p``: one uniform draw per sample, whatever ``p``."""
    return torch.rand(batch, generator=g) < p


def uniform(lo: float, hi: float, batch: int, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(batch, generator=g)


def bcast(v: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to scale or select whole images."""
    return v.view(-1, 1, 1, 1)


def where_each(images: torch.Tensor, selected: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               sync_free: bool | None = None) -> torch.Tensor:
    """``fn(images[i], index)`` where ``selected[i]``, the image unchanged elsewhere (a new tensor).

    On the CPU only the selected samples are computed (reading back which those are is cheap
    there); on an accelerator every sample is and ``torch.where`` keeps the selected ones, so
    the host never waits for the device."""
    if sync_free is None:
        sync_free = images.device.type != "cpu"
    if sync_free:
        everyone = torch.arange(images.shape[0], device=images.device)
        return torch.where(bcast(selected), fn(images, everyone), images)
    out = images.clone()
    if selected.any():
        idx = selected.nonzero().squeeze(1)
        out[idx] = fn(images[idx], idx)
    return out
