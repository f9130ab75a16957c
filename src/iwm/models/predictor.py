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

Where a mask token sits when a geometric family moved y (``query_frame``): ``source`` places
it at the position in x that its patch's pixels come from, as a_x->y says (sin-cos positions at
fractional patch coordinates), so that the predictor need not learn the move's geometry, only
what the moved patch looks like; ``target`` places it at its own position in y. Either way it
predicts y's tokens at y's target blocks, and the two agree when nothing moves pixels. A
``none``-conditioned predictor places its queries at y's own positions in either frame: it sees
nothing of a_x->y. ``query_coords`` places the queries by hand instead (the no-learning floor of
:mod:`iwm.eval.mrr`: queries placed by the known geometry, the action zeroed).

Its LayerNorms take ``norm_eps``: 1e-5 (PyTorch's default) for ours, 1e-6 for an imported
I-JEPA predictor, which was trained with it.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.layers.pos_embed_sincos import freq_bands
from timm.models.vision_transformer import Block
from torch import nn

from ..config import Config, encoder_dims
from ..actions import ActionSet
from .encoder import gather_tokens, run_blocks


class Predictor(nn.Module):
    def __init__(self, grid: int, enc_dim: int, width: int, depth: int, num_heads: int,
                 conditioning: str = "feature", action_dim: int = 7, cond_tokens: int = 1,
                 cond_residual: bool = False, norm_eps: float = 1e-5, moves: ActionSet | None = None):
        super().__init__()
        # the families whose a_x->y says where a query's pixels come from (query_frame=source)
        self.moves = moves if moves is not None and moves.geometric else None
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
                prefix: torch.Tensor | None = None, target_counts: torch.Tensor | None = None,
                query_coords: torch.Tensor | None = None) -> torch.Tensor:
        """context (B, Nc, D) encoder tokens at patches context_idx (B, Nc); target_idx (B, Nt);
        action a_x->y (B, action_dim); context_valid (B, Nc) False where the context is padding
        (None: no padding); prefix (B, K, width) tokens placed first in the sequence, with no
        position (the multi-task token of predictor tuning); target_counts (B, Nt) how many
        identical mask tokens each one stands for (0: padding): as a key it weighs that many
        times (log(count) added to its logits), which gives every token the outputs it would have
        with the copies in the sequence; query_coords (B, Nt, 2) (row, column) in x's patch units
        where the mask tokens sit, in place of the query frame's rule. Returns predicted target
        tokens (B, Nt, D)."""
        b, nt = target_idx.shape
        pos = self.pos_embed.expand(b, -1, -1).to(context.dtype)
        x = self.embed(context) + gather_tokens(pos, context_idx)
        if query_coords is not None:
            where = sincos_at(query_coords, pos.shape[-1])
        else:
            where = self._query_positions(pos, target_idx, None if self.conditioning == "none" else action)
        m = self.mask_token.to(x.dtype) + where.to(x.dtype)
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
        x = run_blocks(self.blocks, x, _key_mask(x.shape[:2], context_valid, target_counts, nt, x.dtype),
                       slice(-nt, None))
        return self.proj(self.norm(x))

    def _query_positions(self, pos: torch.Tensor, target_idx: torch.Tensor,
                         action: torch.Tensor | None) -> torch.Tensor:
        """(B, Nt, width) positions of the mask tokens: y's own, or where a_x->y moves them from."""
        if self.moves is None or action is None:
            return gather_tokens(pos, target_idx)
        grid = math.isqrt(pos.shape[1])
        where = self.moves.source_positions(action.float(), grid)  # (B, N, 2) in x's patch units
        return sincos_at(gather_tokens(where, target_idx), pos.shape[-1])


def _key_mask(shape: torch.Size, context_valid: torch.Tensor | None, target_counts: torch.Tensor | None,
              nt: int, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, L) over the sequence [...], context, mask tokens: which keys every token attends to
    (bool: padded context entries are keys nobody attends to), or with ``target_counts`` what
    is added to their logits (-inf for padding, log(count) for a mask token)."""
    if context_valid is None and target_counts is None:
        return None
    nc = 0 if context_valid is None else context_valid.shape[1]
    if target_counts is None:
        valid = context_valid.new_ones(shape)
        valid[:, -nt - nc:-nt] = context_valid
        return valid
    bias = torch.zeros(shape, dtype=dtype, device=target_counts.device)
    if context_valid is not None:
        bias[:, -nt - nc:-nt].masked_fill_(~context_valid, -math.inf)
    bias[:, -nt:] = target_counts.to(dtype).log()
    return bias


def sincos_at(coords: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """timm's 2-D sin-cos position embedding (``build_sincos2d_pos_embed``'s layout) at any
    (row, column) coordinates (..., 2), fractional or past the grid -> (..., dim)."""
    bands = freq_bands(dim // 4, temperature=temperature, step=1, device=coords.device)
    angles = coords.float().unsqueeze(-1) * bands  # (..., 2, dim / 4)
    return torch.stack([angles.sin(), angles.cos()], dim=-3).flatten(-3)


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
    actions = ActionSet.from_config(cfg.aug, cfg.data.image_size)
    return Predictor(cfg.data.image_size // cfg.model.patch_size, enc_dim, p.width, p.depth,
                     p.num_heads or max(1, p.width // 64), p.conditioning, actions.dim, p.cond_tokens,
                     p.cond_residual, p.norm_eps, actions if p.query_frame == "source" else None)
