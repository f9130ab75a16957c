"""How downstream heads see an image: the encoder's patch tokens, and the predictor's tokens.

Predictor feeding is the prediction task we pick from the paper's Table 3: the encoder's tokens
of the full, unmasked image are the context (every patch position), a mask token is queried at
every patch position, and a conditioned predictor gets the null action a = 0 (a vector of
zeros). The output is one predicted token per patch, (B, N, D).

``predict_all(..., prefix=...)`` also places extra tokens (the multi-task token) first in the
predictor's sequence (``Predictor.forward``'s ``prefix``).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..data.views import normalize
from ..eval.features import extract
from ..models import Encoder, Predictor


def encoder_input(views: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) views -> normalised float network input."""
    return normalize(views.float().div(255.0))


def null_action(predictor: Predictor, batch: int, like: torch.Tensor) -> torch.Tensor | None:
    """a = 0 for a conditioned predictor, None for an unconditioned one."""
    if predictor.conditioning == "none":
        return None
    return torch.zeros(batch, predictor.action_dim, device=like.device, dtype=like.dtype)


def all_positions(batch: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device).expand(batch, n)


def predict_all(predictor: Predictor, tokens: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Encoder tokens (B, N, D) of the whole image -> predicted tokens (B, N, D) at every
    position, with a = 0. ``prefix`` (B, K, width): tokens placed first in the sequence."""
    b, n, _ = tokens.shape
    if n != predictor.pos_embed.shape[1]:
        raise ValueError(f"predictor feeding needs the tokens of every patch ({predictor.pos_embed.shape[1]}), "
                         f"got {n}: images must have the run's image size")
    idx = all_positions(b, n, tokens.device)
    return predictor(tokens, idx, idx, null_action(predictor, b, tokens), prefix=prefix)


def extract_tokens(encoder: Encoder, ds: Dataset, device: torch.device | str = "cpu", batch_size: int = 256,
                   num_workers: int = 0, dtype: torch.dtype = torch.float16,
                   progress: bool = False, desc: str = "tokens") -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (M, N, D) in ``dtype`` on the CPU, labels (M,)) of a frozen encoder over ``ds``.
    float16 halves the cache; the probes cast batches back to float32."""
    return extract(encoder, ds, device, batch_size, num_workers, progress, desc, pooled=False, dtype=dtype)


def token_cache_bytes(num_images: int, encoder: Encoder, dtype: torch.dtype = torch.float16) -> int:
    """Memory the tokens of ``num_images`` images take in ``dtype``."""
    return num_images * encoder.num_patches * encoder.embed_dim * torch.finfo(dtype).bits // 8


ENCODERS = ("target", "context")


def pick_encoder(run, which: str = "target") -> Encoder:
    """The run's EMA target encoder (what I-JEPA and ``iwm eval knn`` evaluate) or its context
    encoder (the one the predictor was trained on)."""
    if which not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {which!r}")
    return run.target_encoder if which == "target" else run.encoder
