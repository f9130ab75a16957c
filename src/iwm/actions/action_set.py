"""The action families a run learns (``aug.families``), together: a_x->y is their encodings
side by side, in the listed order, and every view is transformed by them in that order.

A view's transformation is a :data:`Transform`: ``{family name: that family's parameters}``.
"""

from __future__ import annotations

import torch

from ..config import AugConfig, ConfigError
from .family import ActionFamily, Params, build_family

Transform = dict[str, Params]


def take(t: Transform, idx: slice | torch.Tensor) -> Transform:
    """Some samples' transformation (a process's slice, a micro-batch, a sort order)."""
    return {name: {k: v[idx] for k, v in p.items()} for name, p in t.items()}


def move(t: Transform, device: torch.device | str, non_blocking: bool = False) -> Transform:
    return {name: {k: v.to(device, non_blocking=non_blocking) for k, v in p.items()} for name, p in t.items()}


def length(t: Transform) -> int:
    for p in t.values():
        for v in p.values():
            return v.shape[0]
    return 0


class ActionSet:
    """The families of a run, in order."""

    def __init__(self, families: list[ActionFamily]):
        names = [f.name for f in families]
        if len(set(names)) != len(names):
            raise ConfigError(f"aug.families: {', '.join(names)} names a family twice; list each once")
        self.families = families
        self.slices: dict[str, slice] = {}
        start = 0
        for f in families:
            self.slices[f.name] = slice(start, start + f.dim)
            start += f.dim
        self.dim = start

    @classmethod
    def from_config(cls, aug: AugConfig, image_size: int) -> "ActionSet":
        return cls([build_family(name, aug, image_size) for name in aug.families])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.families)

    @property
    def value_names(self) -> tuple[str, ...]:
        """What each of the ``dim`` numbers of a_x->y is."""
        return tuple(v for f in self.families for v in f.values)

    def family(self, name: str) -> ActionFamily:
        for f in self.families:
            if f.name == name:
                return f
        raise ValueError(f"this run learns no family {name!r}; it learns {', '.join(self.names)}")

    def transforming(self, view: str) -> tuple[str, ...]:
        """The families that transform ``view`` (source or target) in training."""
        return tuple(f.name for f in self.families if f.views in (view, "both"))

    @property
    def geometric(self) -> bool:
        return any(f.geometric for f in self.families)

    # ------------------------------------------------------------------------------------------

    def sample(self, batch: int, generator: torch.Generator, view: str, always: bool | tuple[str, ...] = False,
               only: str | None = None) -> Transform:
        """``view``'s transformation for a batch, every family drawing in order from ``generator``.
        ``always``: every family forced on (True), or the families named. ``only``: that family
        alone, the others the identity (and drawing nothing)."""
        def forced(f: ActionFamily) -> bool:
            return always if isinstance(always, bool) else f.name in always

        return {f.name: (f.sample(batch, generator, view, forced(f)) if only in (None, f.name) else f.identity(batch))
                for f in self.families}

    def sample_pair(self, batch: int, generator: torch.Generator) -> tuple[Transform, Transform]:
        """(source x's, target y's) transformations of a batch; a_x->y is ``encode(source, target)``."""
        source = self.sample(batch, generator, "source")
        return source, self.sample(batch, generator, "target")

    def identity(self, batch: int, device: torch.device | str = "cpu") -> Transform:
        return {f.name: f.identity(batch, device) for f in self.families}

    def apply(self, images: torch.Tensor, t: Transform) -> torch.Tensor:
        """Float images in [0, 1], (B, 3, H, W), transformed by every family in order."""
        for f in self.families:
            images = f.apply(images, t[f.name])
        return images

    def encode(self, source: Transform, target: Transform) -> torch.Tensor:
        """a_x->y, (B, dim) float32."""
        return torch.cat([f.encode(source[f.name], target[f.name]) for f in self.families], dim=1)

    def edit(self, t: Transform, name: str, view: str) -> Transform:
        """``view``'s transformation edited to show one family (``all``: unchanged): that family
        turned on where it transforms ``view``, the families that transform both views (the
        colour jitter every pair has) as drawn, every other family the identity."""
        if name == "all":
            return t
        self.family(name)  # refuse an unknown name
        out: Transform = {}
        for f in self.families:
            p = t[f.name]
            if f.name == name:
                out[f.name] = f.activate(p, view) if f.views in (view, "both") else p
            elif f.views == "both":
                out[f.name] = p
            else:
                out[f.name] = f.identity(length(t), next(iter(p.values())).device)
        return out

    def for_family(self, source: Transform, target: Transform, name: str) -> tuple[Transform, Transform]:
        """A pair edited to show one family (see :meth:`edit`)."""
        return self.edit(source, name, "source"), self.edit(target, name, "target")

    def describe(self, action: torch.Tensor) -> str:
        """One a_x->y, (dim,), in words: the families that act, each in its own terms."""
        parts = [f.describe(action[self.slices[f.name]]) for f in self.families
                 if bool(action[self.slices[f.name]].abs().gt(1e-6).any())]
        return ", ".join(parts) or "identity"

    # ------------------------------------------------------------------------------------------

    def _trace(self, action: torch.Tensor, grid: int, k: int) -> torch.Tensor | None:
        """(B, N * k * k, 2): k x k points inside each of y's N = grid * grid patches (row-major),
        as (x, y) in normalised coordinates, traced back through the geometric families to where
        a_x->y (B, dim) says they come from in x; None when no family moves pixels."""
        moving = [f for f in self.families if f.geometric]
        if not moving:
            return None
        sub = (torch.arange(grid * k, dtype=torch.float32, device=action.device) + 0.5) / (grid * k) * 2 - 1
        ys, xs = torch.meshgrid(sub, sub, indexing="ij")
        pts = torch.stack([xs, ys], -1).view(grid, k, grid, k, 2).permute(0, 2, 1, 3, 4).reshape(1, -1, 2)
        pts = pts.expand(action.shape[0], -1, -1)
        for f in reversed(moving):  # the last family applied is undone first
            pts = f.to_source(action[:, self.slices[f.name]].float(), pts)
        return pts

    def support(self, t: Transform, grid: int, image_size: int, chunk_values: int = 1 << 24) -> torch.Tensor | None:
        """(B, N, N) bool, N = grid * grid: [b, n, m] is True where y's patch n of sample b takes
        any pixel weight from x's patch m under the target transformation ``t`` (None when no
        family moves pixels). Found by pushing one indicator image per x patch through the
        moving families' own ``apply``, in order, so bilinear neighbours, borders and
        compositions are counted exactly as the views are made (a geometric family's ``apply``
        must therefore take any number of channels). ``chunk_values`` bounds the floats held at once."""
        moving = [f for f in self.families if f.geometric]
        if not moving:
            return None
        n, p = grid * grid, image_size // grid
        eye = torch.eye(n).view(n, grid, 1, grid, 1).expand(n, grid, p, grid, p).reshape(1, n, image_size, image_size)
        b = length(t)
        step = max(1, chunk_values // eye.numel())
        out = []
        for lo in range(0, b, step):
            part = take(t, slice(lo, min(b, lo + step)))
            img = eye.expand(length(part), -1, -1, -1)
            for f in moving:
                img = f.apply(img, {k: v.cpu() for k, v in part[f.name].items()})
            # weight of x's patch m anywhere in y's patch n
            w = img.reshape(-1, n, grid, p, grid, p).amax((3, 5)).flatten(2)
            out.append(w.gt(0).transpose(1, 2))
        return torch.cat(out)

    def source_positions(self, action: torch.Tensor, grid: int) -> torch.Tensor | None:
        """(B, N, 2): where the centre of each of y's patches comes from in x, as (row, column)
        in x's patch units (patch centres at integers; outside [0, grid - 1] past x's border),
        as a_x->y (B, dim) says; None when no family moves pixels."""
        pts = self._trace(action, grid, 1)
        if pts is None:
            return None
        return ((pts + 1) / 2 * grid - 0.5).flip(-1)
