"""The ViT encoder: timm's VisionTransformer, so its weights load in timm as they are.

No class token and fixed 2-D sin-cos positions (as I-JEPA); :meth:`Encoder.tokens` runs the
blocks on a subset of patches, which is how the context encoder sees only the context.
Contexts of different lengths are padded; a key mask keeps the padding out of the attention.
"""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer

from ..config import Config, encoder_dims


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), idx (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def run_blocks(blocks: torch.nn.Sequential, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
    """timm blocks over x (B, L, D); ``key_valid`` (B, L) marks the tokens every token may attend
    to (None: all). Padded tokens still get outputs, which callers ignore."""
    if key_valid is None:
        return blocks(x)
    mask = key_valid[:, None, None, :]  # broadcast over heads and queries; SDPA: True = attend
    for blk in blocks:
        x = blk(x, attn_mask=mask)
    return x


class Encoder(VisionTransformer):
    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=0, global_pool="avg",
                         class_token=False,
                         fc_norm=False)  # keep timm's final norm on the tokens (I-JEPA's output)
        self.grid = img_size // patch_size
        pos = build_sincos2d_pos_embed([self.grid, self.grid], embed_dim)
        self.pos_embed.data.copy_(pos.unsqueeze(0))
        self.pos_embed.requires_grad_(False)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def tokens(self, img: torch.Tensor, keep: torch.Tensor | None = None,
               keep_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> patch tokens (B, N or K, D) after the final norm;
        with ``keep`` (B, K) only those patches go through the blocks, and with ``keep_valid``
        (B, K) the entries marked False are padding that no token attends to."""
        x = self.patch_embed(img) + self.pos_embed
        if keep is not None:
            x = gather_tokens(x, keep)
        x = run_blocks(self.blocks, self.norm_pre(x), keep_valid)
        return self.norm(x)

    def pooled(self, img: torch.Tensor) -> torch.Tensor:
        """Mean of the patch tokens: the image representation probes and kNN use."""
        return self.tokens(img).mean(dim=1)


def build_encoder(cfg: Config) -> Encoder:
    dim, depth, heads = encoder_dims(cfg.model)
    return Encoder(cfg.data.image_size, cfg.model.patch_size, dim, depth, heads, cfg.model.mlp_ratio)
