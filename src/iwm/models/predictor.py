"""The predictor p_phi: the world model.

It sees the encoded context of x, mask tokens at the target positions m_a (a shared learned
token plus the target's positional embedding) and the action a_x->y, and predicts the target
encoder's tokens of y at those positions. How a_x->y enters is the paper's Table 1 knob:

- ``none``: not at all (the predictor cannot know the transformation);
- ``sequence``: embedded by an MLP into ``cond_tokens`` extra tokens of the sequence;
- ``feature``: concatenated to the features of every mask token, then projected back to the
  predictor width by an MLP; with ``cond_residual`` the MLP's output is added to the mask token
  (``m + MLP([m, a])``) instead of replacing it, so the positional embedding reaches the blocks
  at full strength from the first step, and a zero last layer makes the action a no-op.

Its LayerNorms take ``norm_eps``: 1e-5 (PyTorch's default) for ours, 1e-6 for an imported
I-JEPA predictor, which was trained with it.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from ..config import Config, encoder_dims
from ..actions import ActionSet
from .encoder import gather_tokens, run_blocks


class Predictor(nn.Module):
    def __init__(self, grid: int, enc_dim: int, width: int, depth: int, num_heads: int,
                 conditioning: str = "feature", action_dim: int = 7, cond_tokens: int = 1,
                 cond_residual: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        self.conditioning = conditioning
        self.cond_residual = cond_residual
        self.action_dim = action_dim
        self.cond_tokens = cond_tokens
        self.embed = nn.Linear(enc_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("pos_embed", build_sincos2d_pos_embed([grid, grid], width).unsqueeze(0),
                             persistent=False)
        if conditioning == "sequence":
            self.cond = nn.Sequential(nn.Linear(action_dim, width), nn.GELU(), nn.Linear(width, width * cond_tokens))
        elif conditioning == "feature":
            self.cond = nn.Sequential(nn.Linear(width + action_dim, width), nn.GELU(), nn.Linear(width, width))
        elif conditioning != "none":
            raise ValueError(f"conditioning must be none, sequence or feature, got {conditioning!r}")
        norm = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks = nn.Sequential(*[
            Block(width, num_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)
        ])
        self.norm = norm(width)
        self.proj = nn.Linear(width, enc_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.apply(_init)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor,
                action: torch.Tensor | None = None, context_valid: torch.Tensor | None = None,
                prefix: torch.Tensor | None = None) -> torch.Tensor:
        """context (B, Nc, D) encoder tokens at patches context_idx (B, Nc); target_idx (B, Nt);
        action a_x->y (B, action_dim); context_valid (B, Nc) False where the context is padding
        (None: no padding); prefix (B, K, width) tokens placed first in the sequence, with no
        position (the multi-task token of predictor tuning). Returns predicted target tokens
        (B, Nt, D)."""
        b, nt = target_idx.shape
        pos = self.pos_embed.expand(b, -1, -1).to(context.dtype)
        x = self.embed(context) + gather_tokens(pos, context_idx)
        m = self.mask_token.to(x.dtype) + gather_tokens(pos, target_idx)
        parts = [x, m]
        if self.conditioning != "none":
            if action is None:
                raise ValueError(f"a {self.conditioning}-conditioned predictor needs the action a_x->y")
            a = action.to(x.dtype)
            if self.conditioning == "feature":
                mixed = self.cond(torch.cat([m, a.unsqueeze(1).expand(-1, nt, -1)], dim=-1))
                parts[1] = m + mixed if self.cond_residual else mixed
            else:
                parts.insert(0, self.cond(a).view(b, self.cond_tokens, -1))
        if prefix is not None:
            parts.insert(0, prefix.to(x.dtype))
        x = torch.cat(parts, dim=1)  # [prefix], [action tokens], context, mask tokens
        key_valid = None
        if context_valid is not None:  # padded context entries are keys nobody attends to
            key_valid = context_valid.new_ones(x.shape[:2])
            key_valid[:, -nt - context.shape[1]:-nt] = context_valid
        x = run_blocks(self.blocks, x, key_valid)
        return self.proj(self.norm(x[:, -nt:]))


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build_predictor(cfg: Config) -> Predictor:
    p = cfg.predictor
    enc_dim = encoder_dims(cfg.model)[0]
    return Predictor(cfg.data.image_size // cfg.model.patch_size, enc_dim, p.width, p.depth,
                     p.num_heads or max(1, p.width // 64), p.conditioning,
                     ActionSet.from_config(cfg.aug, cfg.data.image_size).dim, p.cond_tokens,
                     p.cond_residual, p.norm_eps)
