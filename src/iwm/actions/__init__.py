"""Action families: the transformations between the two views that the world model learns.
``iwm.actions.family`` says what a family is; the built-in ones are photometric (the paper's)
and geometric; :class:`ActionSet` is a run's families together."""

from .action_set import ActionSet, Transform, length, move, take
from .family import ActionFamily, Params, build_family, known_families, register
from . import geometric, photometric  # noqa: F401  (registers the built-in families)

DEFAULT_FAMILIES = ("jitter", "grayscale", "blur", "solarize")  # the paper's, in the order of its pipeline
PHOTOMETRIC = DEFAULT_FAMILIES
GEOMETRIC = ("crop", "hflip", "rot90", "rotate")

__all__ = ["ActionFamily", "ActionSet", "Params", "Transform", "register", "build_family", "known_families",
           "take", "move", "length", "DEFAULT_FAMILIES", "PHOTOMETRIC", "GEOMETRIC"]
