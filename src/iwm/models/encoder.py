"""The ViT encoder: timm's VisionTransformer, so its weights load in timm as they are.

No class token and fixed 2-D sin-cos positions (as I-JEPA); :meth:`Encoder.tokens` runs the
blocks on a subset of patches, which is how the context encoder sees only the context.
Contexts of different lengths are padded; a key mask keeps the padding out of the attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from ..config import Config, encoder_dims


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), idx (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def select_tokens(x: torch.Tensor, at: torch.Tensor | slice) -> torch.Tensor:
    """x (B, N, D) at token indices (B, K) or a slice of the sequence -> (B, K, D)."""
    return x[:, at] if isinstance(at, slice) else gather_tokens(x, at)


def run_blocks(blocks: torch.nn.Sequential, x: torch.Tensor, key_mask: torch.Tensor | None,
               out_at: torch.Tensor | slice | None = None) -> torch.Tensor:
    """timm blocks over x (B, L, D); ``key_mask`` (B, L) marks the tokens every token may attend
    to (bool, None: all) or is added to the attention logits (float, -inf: none). Padded tokens
    still get outputs, which callers ignore. With ``out_at`` (token indices (B, K) or a slice),
    only those tokens' outputs are returned, and the last block computes only them: the rest of
    its queries and MLP rows would be thrown away (their keys and values are still used)."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # over heads and queries
    last = blocks[-1] if out_at is not None and len(blocks) and _plain_block(blocks[-1]) else None
    for blk in blocks[:-1] if last is not None else blocks:
        x = blk(x) if mask is None else blk(x, attn_mask=mask)
    if last is not None:
        return _block_at(last, x, out_at, mask)
    return x if out_at is None else select_tokens(x, out_at)


def _plain_block(blk: torch.nn.Module) -> bool:
    """Whether ``blk`` is a timm Block whose attention :func:`_block_at` reproduces. A block
    sharded by FSDP is not (FSDP changes its class): its weights are gathered only when it is
    called, so it runs whole."""
    a = getattr(blk, "attn", None)
    return (type(blk) is Block and type(a) is Attention and getattr(a, "fused_attn", False)
            and getattr(a, "gate", None) is None)


def _block_at(blk: Block, x: torch.Tensor, at: torch.Tensor | slice, mask: torch.Tensor | None) -> torch.Tensor:
    """timm's Block.forward with queries (and so the residual, projection and MLP) only at ``at``."""
    a = blk.attn
    h = blk.norm1(x)
    b, n, _ = h.shape
    dim = a.num_heads * a.head_dim
    weight, bias = a.qkv.weight, a.qkv.bias
    hq = select_tokens(h, at)
    k = hq.shape[1]
    q = F.linear(hq, weight[:dim], None if bias is None else bias[:dim])
    kv = F.linear(h, weight[dim:], None if bias is None else bias[dim:])
    q = a.q_norm(q.view(b, k, a.num_heads, a.head_dim).transpose(1, 2))
    key, value = kv.view(b, n, 2, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    o = F.scaled_dot_product_attention(q, a.k_norm(key), value, attn_mask=mask,
                                       dropout_p=a.attn_drop.p if a.training else 0.0)
    o = a.proj_drop(a.proj(a.norm(o.transpose(1, 2).reshape(b, k, dim))))
    x = select_tokens(x, at) + blk.drop_path1(blk.ls1(o))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


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
               keep_valid: torch.Tensor | None = None, at: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> patch tokens (B, N or K, D) after the final norm;
        with ``keep`` (B, K) only those patches go through the blocks, and with ``keep_valid``
        (B, K) the entries marked False are padding that no token attends to. With ``at`` (B, M)
        only the tokens at those indices (into the N or K) are returned, for less work."""
        x = self.patch_embed(img) + self.pos_embed
        if keep is not None:
            x = gather_tokens(x, keep)
        x = run_blocks(self.blocks, self.norm_pre(x), keep_valid, at)
        return self.norm(x)

    def pooled(self, img: torch.Tensor) -> torch.Tensor:
        """Mean of the patch tokens: the image representation probes and kNN use."""
        return self.tokens(img).mean(dim=1)


def build_encoder(cfg: Config) -> Encoder:
    dim, depth, heads = encoder_dims(cfg.model)
    return Encoder(cfg.data.image_size, cfg.model.patch_size, dim, depth, heads, cfg.model.mlp_ratio)
