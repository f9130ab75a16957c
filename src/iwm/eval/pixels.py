"""Raw pixels in the place of an encoder: the reference every representation score is shown
beside, run through the very same protocol (kNN, linear and attentive probes)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..models.encoder import gather_tokens


class RawPixels(nn.Module):
    """An "encoder" with no weights, fed the same normalised images as a real one.

    ``pooled`` is the whole image flattened (3 * S * S values), not a mean over patches: the
    mean patch of an image would throw away where things are, which the pixels' score should keep.
    ``tokens`` are the image's p x p patches flattened (3 * p * p values each), in the row-major
    patch order of the ViT's patch embedding, for the probes that read tokens.
    """

    def __init__(self, image_size: int, patch_size: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch size {patch_size} must divide the image size {image_size}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.embed_dim = 3 * patch_size * patch_size

    @classmethod
    def of(cls, cfg: Config) -> "RawPixels":
        """The pixels at a run's image size, cut into its patches."""
        return cls(cfg.data.image_size, cfg.model.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def tokens(self, img: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> patches (B, N, 3 * p * p); ``keep`` (B, K) selects some."""
        b, c, _, _ = img.shape
        p, g = self.patch_size, self.grid
        x = img.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)
        return x if keep is None else gather_tokens(x, keep)

    def pooled(self, img: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> (B, 3 * H * W)."""
        return img.flatten(1)
