"""The target view y: a random resized crop and flip of the image, drawn from a seeded
generator so that a sample's view depends only on (seed, epoch, index), not on which worker
loads it or whether the run was resumed."""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, the usual input normalisation for ViTs
STD = (0.229, 0.224, 0.225)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    # distinct streams per (seed, epoch, index) without Python's salted hash()
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_000_007 + index)


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
             g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop; torchvision's rule with our generator."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g).item())
        ar = math.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand(1, generator=g).item())
        w = round(math.sqrt(target * ar))
        h = round(math.sqrt(target / ar))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return top, left, h, w
    # fall back to the largest centred crop within the ratio bounds
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def target_view(img: torch.Tensor, size: int, scale: tuple[float, float], hflip: bool,
                g: torch.Generator) -> torch.Tensor:
    """uint8 (3, H, W) image -> uint8 (3, size, size) target view y."""
    top, left, h, w = crop_box(img.shape[-2], img.shape[-1], scale, (3 / 4, 4 / 3), g)
    out = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    if hflip and torch.rand(1, generator=g).item() < 0.5:
        out = TF.horizontal_flip(out)
    return out


def center_view(img: torch.Tensor, size: int) -> torch.Tensor:
    """Deterministic view for evaluation: resize the short side, centre crop."""
    if img.shape[-2:] != (size, size):
        img = TF.center_crop(TF.resize(img, [size], antialias=True), [size, size])
    return img


def normalize(x: torch.Tensor) -> torch.Tensor:
    """float images in [0, 1] (B, 3, H, W) -> network input."""
    # filled on the device: torch.tensor(MEAN, device=...) would copy from the host and wait
    # for the GPU to drain its queue, every step
    mean = torch.stack([x.new_full((), m) for m in MEAN]).view(1, 3, 1, 1)
    std = torch.stack([x.new_full((), s) for s in STD]).view(1, 3, 1, 1)
    return (x - mean) / std
