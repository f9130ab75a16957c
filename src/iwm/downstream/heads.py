"""Small heads put on frozen or finetuned tokens: pooled linear, attentive pooling, per-token."""

from __future__ import annotations

import torch
from torch import nn


def _init_linear(layer: nn.Linear) -> nn.Linear:
    nn.init.trunc_normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


class PooledHead(nn.Module):
    """Mean over tokens -> LayerNorm -> linear (MAE's finetuning head: the norm makes the scale
    of pooled encoder and predictor tokens alike)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = _init_linear(nn.Linear(dim, num_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(tokens.mean(dim=1)))


class AttentivePool(nn.Module):
    """One learned query cross-attends to the tokens, then an MLP (a pre-norm transformer block
    whose only query is the learned one), as V-JEPA's attentive probe. (B, N, D) -> (B, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(_init_linear(nn.Linear(dim, hidden)), nn.GELU(), _init_linear(nn.Linear(hidden, dim)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(tokens)
        q = self.query.expand(tokens.shape[0], -1, -1).to(kv.dtype)
        x = q + self.attn(q, kv, kv, need_weights=False)[0]
        x = x + self.mlp(self.norm_mlp(x))
        return x[:, 0]


class AttentiveClassifier(nn.Module):
    """Attentive pooling -> LayerNorm -> linear."""

    def __init__(self, dim: int, num_heads: int, num_classes: int):
        super().__init__()
        self.pool = AttentivePool(dim, num_heads)
        self.norm = nn.LayerNorm(dim)
        self.fc = _init_linear(nn.Linear(dim, num_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.pool(tokens)))
