"""Terms added to the prediction loss that act on the embeddings themselves, one class each,
registered by name for ``optim.regularizer`` (the way action families are): the next one a
researcher wants (VICReg's variance and covariance, say) is one class here, with no edit to the
training loop.

:class:`SIGReg` is LeJEPA's (Balestriero and LeCun 2025, arXiv 2511.08544): embeddings pushed
towards an isotropic Gaussian, measured on random one-dimensional projections by the Epps-Pulley
test, which compares each projection's empirical characteristic function with the standard
normal's. It lets the encoder be its own target (``optim.target=online``), with no EMA teacher.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from ..config import ConfigError, OptimConfig


class Regularizer(nn.Module):
    """``forward(z, step)``: a scalar from the embeddings ``z`` (N, D) of this process's batch,
    computed over the global batch where the processes are several. ``step`` seeds any draw, so
    that every process draws alike and a resumed run as an uninterrupted one."""

    name: ClassVar[str] = ""

    @classmethod
    def from_config(cls, optim: OptimConfig) -> "Regularizer":
        """The regularizer ``optim`` asks for (a subclass with settings reads them here)."""
        return cls()

    def forward(self, z: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError


_REGISTRY: dict[str, Callable[[OptimConfig], Regularizer]] = {}


def register_regularizer(cls: type[Regularizer]) -> type[Regularizer]:
    """Make ``cls`` available to ``optim.regularizer`` under ``cls.name`` (a class decorator);
    ``cls.from_config(optim)`` builds it."""
    if not (isinstance(cls, type) and issubclass(cls, Regularizer)) or not cls.name:
        raise TypeError(f"register_regularizer takes a Regularizer subclass with a name, got {cls!r}")
    _REGISTRY[cls.name] = cls.from_config
    return cls


def build_regularizer(optim: OptimConfig) -> Regularizer | None:
    if not optim.regularizer:
        return None
    if optim.regularizer not in _REGISTRY:
        raise ConfigError(f"optim.regularizer: {optim.regularizer!r} is not a known regularizer; choose from "
                          f"{', '.join(_REGISTRY)}, or '' for none")
    return _REGISTRY[optim.regularizer](optim)


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the processes, with its gradient passed back to each."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t)
    return t


def trapezoid_weights(points: int, t_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid t on [0, t_max] and the weights of the integral over the whole line of an even
    integrand, by the trapezoid rule, with the test's weight exp(-t^2 / 2) folded in."""
    t = torch.linspace(0.0, t_max, points, dtype=torch.float64)
    w = torch.full((points,), t_max / (points - 1), dtype=torch.float64)
    w[0] = w[-1] = w[0] / 2
    return t, 2 * w * torch.exp(-t ** 2 / 2)


@register_regularizer
class SIGReg(Regularizer):
    """The Epps-Pulley statistic of ``directions`` random unit projections of the embeddings
    against N(0, 1), averaged over the directions:

        N * integral over t of |phi_N(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt,

    phi_N the projection's empirical characteristic function over the global batch (its sums
    all-reduced), the integral by the trapezoid rule on ``points`` points of [0, t_max] (the
    integrand is even). The directions are drawn afresh each step from a generator seeded by the
    step, the same on every process."""

    name = "sigreg"

    def __init__(self, directions: int = 1024, points: int = 17, t_max: float = 3.0, seed: int = 0):
        super().__init__()
        self.directions, self.seed = directions, seed
        t, w = trapezoid_weights(points, t_max)
        self.register_buffer("t", t.float(), persistent=False)
        self.register_buffer("w", w.float(), persistent=False)
        self.register_buffer("normal_cf", torch.exp(-t ** 2 / 2).float(), persistent=False)

    @classmethod
    def from_config(cls, optim: OptimConfig) -> "SIGReg":
        return cls(optim.sigreg_directions, optim.sigreg_points)

    @torch.compiler.disable  # a seeded CPU draw: nothing for a compiler to trace
    def slices(self, dim: int, step: int, device: torch.device) -> torch.Tensor:
        """(dim, directions) unit columns for ``step``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        a = torch.randn(dim, self.directions, generator=g)
        return (a / a.norm(dim=0, keepdim=True)).to(device, non_blocking=True)

    def forward(self, z: torch.Tensor, step: int) -> torch.Tensor:
        proj = z.float() @ self.slices(z.shape[-1], step, z.device)  # (N, M)
        tz = proj.unsqueeze(-1) * self.t  # (N, M, T)
        n = global_sum(z.new_tensor(float(z.shape[0])))
        cos = global_sum(tz.cos().sum(0)) / n  # the characteristic function's real part, (M, T)
        sin = global_sum(tz.sin().sum(0)) / n  # and its imaginary part
        err = (cos - self.normal_cf) ** 2 + sin ** 2
        return n * (err * self.w).sum(-1).mean()

