"""Running pretrained networks at another image size: the fixed sin-cos positions are rebuilt
for the new patch grid (exactly what a network trained at that size would have had)."""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed

from ..config import ConfigError
from .encoder import Encoder
from .predictor import Predictor


def check_image_size(image_size: int, patch_size: int) -> int:
    """The patch grid side of ``image_size``; a size the patches cannot tile is refused."""
    if image_size <= 0 or image_size % patch_size:
        lo = max(patch_size, image_size - image_size % patch_size)
        raise ConfigError(f"image size {image_size} is not a multiple of the patch size {patch_size} "
                         f"(try {lo} or {lo + patch_size})")
    return image_size // patch_size


@torch.no_grad()
def resize_encoder(encoder: Encoder, image_size: int) -> Encoder:
    """In place: the encoder takes ``image_size`` square images from now on."""
    patch = encoder.patch_embed.patch_size[0]
    grid = check_image_size(image_size, patch)
    if grid != encoder.grid:
        encoder.set_input_size(img_size=(image_size, image_size))  # timm: patch embed + a resized pos_embed
        pos = build_sincos2d_pos_embed([grid, grid], encoder.embed_dim)  # ... replaced by the exact positions
        encoder.pos_embed.copy_(pos.unsqueeze(0).to(encoder.pos_embed))
        encoder.grid = grid
    return encoder


@torch.no_grad()
def resize_predictor(predictor: Predictor, grid: int) -> Predictor:
    """In place: the predictor's positions cover a ``grid`` x ``grid`` patch grid."""
    old = predictor.pos_embed
    if old.shape[1] != grid * grid:
        predictor.pos_embed = build_sincos2d_pos_embed([grid, grid], old.shape[-1]).unsqueeze(0).to(old)
    return predictor
