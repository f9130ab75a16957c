"""Geometric action families: the target view y is the source view moved (cropped, flipped,
rotated), and the world model learns to predict y's tokens, at y's positions, from x and the
parameters of the move.

They transform the target only (``views = "target"``): the source x keeps the frame of the
crop both views come from, in which its context positions are given, and the predictor
predicts the target blocks at their positions in y's frame. A target patch then takes its
pixels from elsewhere in x (:meth:`to_source`), and the masks keep every x patch those pixels
fall in out of the context, so the context never shows a target block's pixels, as with the
photometric families (``iwm.masks``). The predictor places each mask token at the point in x its
patch's centre comes from (``predictor.query_frame=source``, :mod:`iwm.models.predictor`), which
each family computes from its part of a_x->y alone (:meth:`to_source`).

Every family draws an ``on`` flag with its probability (scaled by ``aug.strength``) and its
magnitudes (kept when off, so that evaluating one family at a time can turn it on); off, it is
the identity and encodes as zeros.

- ``crop``: y is a square crop of x, resized back up (a zoom in): a_x->y = (log of its side as
  a fraction of x's, its centre's offset in x, rows then columns, in [-1, 1] units);
- ``hflip``: y is x mirrored left to right: a_x->y = 1 where mirrored;
- ``rot90``: y is x turned by k quarter turns (``torch.rot90``, k = 1, 2, 3): one-hot of k;
- ``rotate``: y is x turned by a small angle about its centre (bilinear, the corners that
  leave the image filled with black): a_x->y = the angle in radians.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugConfig
from .family import ActionFamily, Params, coin, register, uniform, where_each


def _warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``images`` through per-sample affine maps (B, 2, 3) from output to input
    coordinates (``affine_grid``'s convention), bilinear, black outside."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class _Geometric(ActionFamily):
    """An ``on`` flag with a probability, then the family's magnitudes (drawn either way)."""

    views, geometric = "target", True

    def __init__(self, prob: float):
        self.prob = prob

    def sample(self, batch: int, generator: torch.Generator, view: str, always: bool = False) -> Params:
        if view != "target":
            return self.identity(batch)
        on = coin(1.0 if always else self.prob, batch, generator)
        return {"on": on, **self._magnitudes(batch, generator)}

    def identity(self, batch: int, device: torch.device | str = "cpu") -> Params:
        return {"on": torch.zeros(batch, dtype=torch.bool, device=device), **self._neutral(batch, device)}

    def _magnitudes(self, batch: int, g: torch.Generator) -> Params:
        """The family's draws besides ``on``."""
        return {}

    def _neutral(self, batch: int, device: torch.device | str) -> Params:
        """Magnitudes that leave an image unchanged."""
        return {}

    def activate(self, params: Params, view: str) -> Params:
        return {**params, "on": torch.full_like(params["on"], view == "target")}


@register
class Crop(_Geometric):
    name, values = "crop", ("crop_log_side", "crop_dy", "crop_dx")

    def __init__(self, prob: float = 0.5, scale: tuple[float, float] = (0.4, 1.0)):
        super().__init__(prob)
        self.scale = scale  # the crop's area as a fraction of the source's

    @classmethod
    def from_config(cls, aug: AugConfig, image_size: int) -> "Crop":
        return cls(min(1.0, aug.crop_prob * aug.strength), aug.crop_scale)

    def _magnitudes(self, batch: int, g: torch.Generator) -> Params:
        side = uniform(*self.scale, batch, g).sqrt()
        dy, dx = (uniform(-1.0, 1.0, batch, g) * (1.0 - side) for _ in range(2))
        return {"side": side, "dy": dy, "dx": dx}

    def _neutral(self, batch: int, device: torch.device | str) -> Params:
        zeros = torch.zeros(batch, device=device)
        return {"side": zeros + 1.0, "dy": zeros, "dx": zeros.clone()}

    @staticmethod
    def _box(p: Params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(side, dy, dx) where on, the whole image elsewhere."""
        on = p["on"]
        return torch.where(on, p["side"], 1.0), torch.where(on, p["dy"], 0.0), torch.where(on, p["dx"], 0.0)

    def _theta(self, p: Params) -> torch.Tensor:
        s, zero = p["side"], torch.zeros_like(p["side"])
        return torch.stack([torch.stack([s, zero, p["dx"]], 1), torch.stack([zero, s, p["dy"]], 1)], 1)

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        # upsampling a crop needs no antialiasing: bilinear is what resized_crop does then
        return where_each(images, params["on"], lambda z, idx: _warp(z, self._theta(params)[idx]))

    def encode(self, source: Params, target: Params) -> torch.Tensor:
        # the target's box in the source's frame
        (ss, sy, sx), (ts, ty, tx) = self._box(source), self._box(target)
        return torch.stack([(ts / ss).log(), (ty - sy) / ss, (tx - sx) / ss], 1).float()

    def describe(self, action: torch.Tensor) -> str:
        side, dy, dx = action.tolist()
        return f"crop side {math.exp(side):.2f} at ({dy:+.2f}, {dx:+.2f})"

    def to_source(self, action: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        side, dy, dx = action[:, 0].exp(), action[:, 1], action[:, 2]
        return points * side.view(-1, 1, 1) + torch.stack([dx, dy], 1).unsqueeze(1)


@register
class HFlip(_Geometric):
    name, values = "hflip", ("hflip",)

    def __init__(self, prob: float = 0.5):
        super().__init__(prob)

    @classmethod
    def from_config(cls, aug: AugConfig, image_size: int) -> "HFlip":
        return cls(min(1.0, aug.hflip_prob * aug.strength))

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return where_each(images, params["on"], lambda z, idx: z.flip(-1))

    def encode(self, source: Params, target: Params) -> torch.Tensor:
        return (source["on"] ^ target["on"]).float().unsqueeze(1)

    def describe(self, action: torch.Tensor) -> str:
        return "hflip"

    def to_source(self, action: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        sign = torch.where(action[:, 0] > 0.5, -1.0, 1.0).view(-1, 1)
        return torch.stack([points[..., 0] * sign, points[..., 1]], -1)


@register
class Rot90(_Geometric):
    name, values = "rot90", ("rot90_1", "rot90_2", "rot90_3")

    def __init__(self, prob: float = 0.75):
        super().__init__(prob)

    @classmethod
    def from_config(cls, aug: AugConfig, image_size: int) -> "Rot90":
        return cls(min(1.0, aug.rot90_prob * aug.strength))

    def _magnitudes(self, batch: int, g: torch.Generator) -> Params:
        return {"k": torch.randint(1, 4, (batch,), generator=g)}

    def _neutral(self, batch: int, device: torch.device | str) -> Params:
        return {"k": torch.zeros(batch, dtype=torch.long, device=device)}

    @staticmethod
    def _turns(p: Params) -> torch.Tensor:
        return torch.where(p["on"], p["k"], 0)

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        k = self._turns(params)
        out = images
        for turns in (1, 2, 3):
            out = where_each(out, k == turns, lambda z, idx, t=turns: torch.rot90(z, t, dims=(-2, -1)))
        return out

    def encode(self, source: Params, target: Params) -> torch.Tensor:
        turns = (self._turns(target) - self._turns(source)) % 4
        return F.one_hot(turns, 4)[:, 1:].float()

    def describe(self, action: torch.Tensor) -> str:
        return f"rot90 x{int(action.argmax()) + 1}"

    def to_source(self, action: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        # torch.rot90 by one turn: out[i, j] = in[j, W - 1 - i], i.e. (x, y) comes from (-y, x)
        x, y = points[..., 0], points[..., 1]
        k = torch.where(action.amax(1) > 0.5, action.argmax(1) + 1, 0).view(-1, 1)
        src_x = torch.where(k == 1, -y, torch.where(k == 2, -x, torch.where(k == 3, y, x)))
        src_y = torch.where(k == 1, x, torch.where(k == 2, -y, torch.where(k == 3, -x, y)))
        return torch.stack([src_x, src_y], -1)


@register
class Rotate(_Geometric):
    name, values = "rotate", ("rotate_radians",)

    def __init__(self, prob: float = 0.5, degrees: float = 15.0):
        super().__init__(prob)
        self.radians = math.radians(degrees)

    @classmethod
    def from_config(cls, aug: AugConfig, image_size: int) -> "Rotate":
        return cls(min(1.0, aug.rotate_prob * aug.strength), aug.rotate_degrees)

    def _magnitudes(self, batch: int, g: torch.Generator) -> Params:
        return {"angle": uniform(-self.radians, self.radians, batch, g)}

    def _neutral(self, batch: int, device: torch.device | str) -> Params:
        return {"angle": torch.zeros(batch, device=device)}

    @staticmethod
    def _angle(p: Params) -> torch.Tensor:
        return torch.where(p["on"], p["angle"], 0.0)

    def _theta(self, angle: torch.Tensor) -> torch.Tensor:
        c, s, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        return torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1)

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return where_each(images, params["on"], lambda z, idx: _warp(z, self._theta(params["angle"][idx])))

    def encode(self, source: Params, target: Params) -> torch.Tensor:
        return (self._angle(target) - self._angle(source)).float().unsqueeze(1)

    def describe(self, action: torch.Tensor) -> str:
        return f"rotate {math.degrees(float(action[0])):+.0f} deg"

    def to_source(self, action: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        rot = self._theta(action[:, 0])[:, :, :2]  # (B, 2, 2), output -> input
        return points @ rot.transpose(1, 2)
