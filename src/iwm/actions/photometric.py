"""The paper's action families: colour jitter of both views, and the destructive
transformations of the source (grayscale, blur, solarisation), on the batched ops of
:mod:`iwm.photometric`.

Listed in the order ``jitter, grayscale, blur, solarize`` (the default ``aug.families``), they
draw the same numbers from a step's generator, apply the same ops and encode the same 7-number
a_x->y as the models shipped before families existed, so those load and score unchanged::

    0-3 jitter     b_y - b_x, c_y - c_x, s_y - s_x (factors; 1 = unchanged), h_y - h_x (shift)
    4   grayscale  1 if x was turned gray
    5   blur       1 if x was blurred
    6   solarize   1 if x was solarised

``aug.strength`` scales every range and probability at once (0: the identity, as I-JEPA).
"""

from __future__ import annotations

import torch

from ..config import AugConfig
from ..photometric import JITTER_FNS, NEUTRAL, blur_kernel_size, gaussian_blur, grayscale, solarize
from .family import ActionFamily, Params, bcast, coin, register, uniform, where_each

JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@register
class Jitter(ActionFamily):
    """Brightness, contrast, saturation and hue in a random order per sample, on both views
    independently; a_x->y is the target's factors minus the source's."""

    name, values, views = "jitter", JITTER_OPS, "both"

    def __init__(self, source_prob: float = 0.8, target_prob: float = 0.8,
                 ranges: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)):
        self.source_prob, self.target_prob, self.ranges = source_prob, target_prob, ranges

    @classmethod
    def from_config(cls, aug: AugConfig, image_size: int) -> "Jitter":
        s = aug.strength
        return cls(min(1.0, aug.jitter_prob * s), min(1.0, aug.target_jitter_prob * s),
                   (aug.brightness * s, aug.contrast * s, aug.saturation * s, aug.hue * s))

    def sample(self, batch: int, generator: torch.Generator, view: str, always: bool = False) -> Params:
        g = generator
        p = 1.0 if always else (self.source_prob if view == "source" else self.target_prob)
        on = coin(p, batch, g)
        order = torch.argsort(torch.rand(batch, 4, generator=g), dim=1)
        b, c, s, h = self.ranges
        factors = [uniform(1 - r, 1 + r, batch, g) for r in (b, c, s)] + [uniform(-h, h, batch, g)]
        params = {"order": order}
        for name, f, neutral in zip(JITTER_OPS, factors, NEUTRAL):
            params[name] = torch.where(on, f, torch.full((batch,), neutral))
        return params

    def identity(self, batch: int, device: torch.device | str = "cpu") -> Params:
        params = {"order": torch.arange(4, device=device).repeat(batch, 1)}
        for name, neutral in zip(JITTER_OPS, NEUTRAL):
            params[name] = torch.full((batch,), neutral, device=device)
        return params

    def apply(self, images: torch.Tensor, params: Params, sync_free: bool | None = None) -> torch.Tensor:
        if sync_free is None:
            sync_free = images.device.type != "cpu"
        factors = [params[n] for n in JITTER_OPS]
        order = params["order"]
        x = images if sync_free else images.clone()
        for slot in range(4):
            out = x
            for op in range(4):
                sel = (order[:, slot] == op) & (factors[op] != NEUTRAL[op])
                if sync_free:
                    out = torch.where(bcast(sel), JITTER_FNS[op](x, factors[op]), out)
                elif sel.any():  # skipping empty ops is worth far more on a CPU than the read-back costs
                    idx = sel.nonzero().squeeze(1)
                    x[idx] = JITTER_FNS[op](x[idx], factors[op][idx])
            x = out
        return x

    def encode(self, source: Params, target: Params) -> torch.Tensor:
        return torch.stack([target[n] - source[n] for n in JITTER_OPS], dim=1).float()

    def describe(self, action: torch.Tensor) -> str:
        return "jitter " + " ".join(f"{n[0]}{float(v):+.2f}" for n, v in zip(JITTER_OPS, action))


class _SourceFlag(ActionFamily):
    """A destructive transformation of the source with a probability; a_x->y is 1 where x
    received it (what the world model must undo)."""

    views = "source"
    config_prob = ""  # the AugConfig key of the probability

    def __init__(self, prob: float):
        self.prob = prob

    @classmethod
    def from_config(cls, aug: AugConfig, image_size: int) -> "_SourceFlag":
        return cls(min(1.0, getattr(aug, cls.config_prob) * aug.strength))

    def sample(self, batch: int, generator: torch.Generator, view: str, always: bool = False) -> Params:
        # the target's draw is made, and thrown away, so that both views use the stream alike
        p = (1.0 if always else self.prob) if view == "source" else 0.0
        return {"on": coin(p, batch, generator)}

    def identity(self, batch: int, device: torch.device | str = "cpu") -> Params:
        return {"on": torch.zeros(batch, dtype=torch.bool, device=device)}

    def activate(self, params: Params, view: str) -> Params:
        return {**params, "on": torch.full_like(params["on"], view == "source")}

    def encode(self, source: Params, target: Params) -> torch.Tensor:
        return (source["on"].float() - target["on"].float()).unsqueeze(1)

    def describe(self, action: torch.Tensor) -> str:
        return self.name if float(action[0]) > 0 else f"{self.name} on the target"

    def op(self, images: torch.Tensor, params: Params, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return where_each(images, params["on"], lambda z, idx: self.op(z, params, idx))


@register
class Grayscale(_SourceFlag):
    name, values, config_prob = "grayscale", ("grayscale",), "grayscale_prob"

    def op(self, images: torch.Tensor, params: Params, idx: torch.Tensor) -> torch.Tensor:
        return grayscale(images)


@register
class Blur(_SourceFlag):
    """Gaussian blur with a sigma drawn per sample from ``aug.blur_sigma``."""

    name, values, config_prob = "blur", ("blur",), "blur_prob"

    def __init__(self, prob: float, sigma: tuple[float, float] = (0.1, 2.0), kernel_size: int = 13):
        super().__init__(prob)
        self.sigma, self.kernel_size = sigma, kernel_size

    @classmethod
    def from_config(cls, aug: AugConfig, image_size: int) -> "Blur":
        return cls(min(1.0, aug.blur_prob * aug.strength), aug.blur_sigma, blur_kernel_size(aug, image_size))

    def sample(self, batch: int, generator: torch.Generator, view: str, always: bool = False) -> Params:
        params = super().sample(batch, generator, view, always)
        return {**params, "sigma": uniform(*self.sigma, batch, generator)}

    def identity(self, batch: int, device: torch.device | str = "cpu") -> Params:
        return {**super().identity(batch, device), "sigma": torch.ones(batch, device=device)}

    def op(self, images: torch.Tensor, params: Params, idx: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(images, params["sigma"][idx], self.kernel_size)


@register
class Solarize(_SourceFlag):
    name, values, config_prob = "solarize", ("solarize",), "solarize_prob"

    def op(self, images: torch.Tensor, params: Params, idx: torch.Tensor) -> torch.Tensor:
        return solarize(images)
