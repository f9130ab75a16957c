"""Load a run or checkpoint and use its parts from Python.

>>> import iwm
>>> run = iwm.load("runs/cifar10_equi")          # or a path to a .pt checkpoint
>>> tokens = run.encode(images)                    # (B, N, D) patch tokens, target encoder
>>> x, params = run.corrupt(images, seed=0)        # sample a photometric transformation
>>> pred = run.predict(context, ctx_idx, tgt_idx, params.action())
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import config as config_mod
from .checkpoint import export_safetensors, find_checkpoint, load_checkpoint, load_weights
from .config import Config
from .data.views import normalize
from .models import Encoder, Predictor, build_encoder, build_predictor
from .photometric import PhotometricParams, PhotometricSampler, apply, blur_kernel_size


@dataclass
class Run:
    config: Config
    encoder: Encoder
    target_encoder: Encoder
    predictor: Predictor
    sampler: PhotometricSampler  # the transformation sampler the run was trained with
    step: int
    path: Path

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def to(self, device: str | torch.device) -> "Run":
        """Move the three networks to ``device`` (in place); returns the run."""
        for m in (self.encoder, self.target_encoder, self.predictor):
            m.to(device)
        return self

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        if images.dtype == torch.uint8:
            images = images.float().div(255.0)
        return normalize(images)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, target: bool = True, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W), uint8 or float in [0, 1] -> patch tokens (B, N, D).
        ``target`` picks the EMA target encoder (the one I-JEPA evaluates) over the context one."""
        enc = self.target_encoder if target else self.encoder
        return enc.tokens(self._input(images), keep)

    @torch.no_grad()
    def predict(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor,
                action: torch.Tensor | None) -> torch.Tensor:
        """The world model: context tokens (B, Nc, D) at patches ``context_idx`` (B, Nc), the
        action a_x->y (B, 7), target patches ``target_idx`` (B, Nt) -> predicted tokens (B, Nt, D)."""
        return self.predictor(context.to(self.device), context_idx.to(self.device), target_idx.to(self.device),
                              None if action is None else action.to(self.device))

    def corrupt(self, images: torch.Tensor, seed: int = 0,
                params: PhotometricParams | None = None) -> tuple[torch.Tensor, PhotometricParams]:
        """Source views x from float images y in [0, 1] with sampled (or given) parameters."""
        if params is None:
            params = self.sampler.sample(images.shape[0], torch.Generator().manual_seed(seed))
        k = blur_kernel_size(self.config.aug, self.config.data.image_size)
        return apply(images, params.to(images.device), k), params

    def export(self, path: str | Path) -> None:
        """Encoder, target encoder and predictor weights as one safetensors file."""
        export_safetensors({"encoder": self.encoder, "target_encoder": self.target_encoder,
                            "predictor": self.predictor}, path)


def load(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """A run directory or checkpoint file -> :class:`Run` with networks in eval mode."""
    ckpt_path = find_checkpoint(path)
    state = load_checkpoint(ckpt_path)
    cfg = config_mod.from_dict(state["config"])
    encoder, target, predictor = build_encoder(cfg), build_encoder(cfg), build_predictor(cfg)
    load_weights(encoder, state["encoder"], "encoder")
    load_weights(target, state["target_encoder"], "target encoder")
    load_weights(predictor, state["predictor"], "predictor")
    for m in (encoder, target, predictor):
        m.to(device).eval().requires_grad_(False)
    return Run(cfg, encoder, target, predictor, PhotometricSampler(cfg.aug), int(state["step"]), ckpt_path)
