"""The device-side data path (``data.on_device``): a data set that fits in memory held as uint8
on the device, its random resized crops and flips drawn for the global batch and cut in batch.

The per-sample path (:func:`.views.target_view` in DataLoader workers) cannot feed a GPU that
trains a 32-px model at tens of thousands of images per second. Here one step's crops cost a
handful of kernels: an index gather, two batched matrix products, a rounding.

Boxes follow torchvision's RandomResizedCrop rule (10 tries, then the centred fallback) as
:func:`.views.crop_box` does, drawn for the whole global batch from a generator seeded by
(seed, step), then sliced per process: a resumed run and any process count see the same crops.
The resize is torchvision's antialiased bilinear resize (the triangle filter that
``resized_crop(..., antialias=True)`` uses, clamped at the crop's edges), written as per-sample
row and column weight matrices; it differs from the per-sample path only by that path's
fixed-point uint8 arithmetic (at most 1 grey level, tested).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..config import ConfigError, DataConfig
from .datasets import ArrayDataset, ImageFolder

log = logging.getLogger(__name__)

RATIO = (3 / 4, 4 / 3)  # the aspect-ratio range of target_view
TRIES = 10  # torchvision's attempts before the centred fallback


def crop_generator(seed: int, step: int) -> torch.Generator:
    """The crops' stream for a step: apart from the step generator of iwm.train.step, so that the
    photometric parameters and masks are the same whichever data path cut the crops."""
    return torch.Generator().manual_seed((1 << 62) + seed * 1_000_003 + step)


def draw_boxes(sizes: torch.Tensor, scale: tuple[float, float], hflip: bool, g: torch.Generator,
               ratio: tuple[float, float] = RATIO) -> torch.Tensor:
    """(top, left, h, w, flip) per image, (G, 5) int64, for images of ``sizes`` (G, 2) = (H, W).

    The rule of :func:`.views.crop_box`, vectorised: every try is drawn for every sample (the
    stream's use depends on G alone), the first try that fits is kept."""
    n = sizes.shape[0]
    height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, TRIES, generator=g, dtype=torch.float64))
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    ar = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand(n, TRIES, generator=g, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * ar))
    h = torch.round(torch.sqrt(target / ar))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1, keepdim=True)  # argmax returns the first of equal values
    found = fits.any(1)
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    height, width = height[:, 0], width[:, 0]
    u_top = torch.rand(n, generator=g, dtype=torch.float64)
    u_left = torch.rand(n, generator=g, dtype=torch.float64)
    flip = torch.rand(n, generator=g) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    top = torch.floor(u_top * (height - h + 1))
    left = torch.floor(u_left * (width - w + 1))
    # the largest centred crop within the ratio bounds, where no try fitted
    in_ratio = width / height
    fw = torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width)
    fh = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    h, w = torch.where(found, h, fh), torch.where(found, w, fw)
    top = torch.where(found, top, torch.div(height - fh, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - fw, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w, flip.double()], 1).long()


def _resize_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """(B, out_size, in_size): row i holds the weights of the input pixels for output pixel i
    when [start, start + length) is resized to out_size, antialiased as PIL and torchvision
    (triangle filter widened by the downscale factor), nothing read outside the crop."""
    dev = start.device
    start, length = start.float().view(-1, 1, 1), length.float().view(-1, 1, 1)
    scale = length / out_size
    center = start + (torch.arange(out_size, device=dev, dtype=torch.float32).view(1, -1, 1) + 0.5) * scale
    j = torch.arange(in_size, device=dev, dtype=torch.float32).view(1, 1, -1)
    w = (1.0 - (j + 0.5 - center).abs() / scale.clamp(min=1.0)).clamp_(min=0.0)
    w = w * ((j >= start) & (j < start + length))
    return w / w.sum(-1, keepdim=True)


def resized_crops(images: torch.Tensor, index: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 3, size, size): the crops ``boxes`` (B, 5) of ``images[index]`` ((N, 3, H, W)
    uint8, on the device), resized and flipped; two batched matrix products, no per-sample loop."""
    top, left, h, w, flip = boxes.to(images.device, non_blocking=True).unbind(1)
    rows = _resize_weights(top, h, images.shape[-2], size)  # (B, size, H)
    cols = _resize_weights(left, w, images.shape[-1], size)  # (B, size, W)
    cols = torch.where(flip.bool().view(-1, 1, 1), cols.flip(1), cols)  # a flip reverses the output columns
    x = images[index.to(images.device, non_blocking=True)].float()
    out = rows.unsqueeze(1) @ x @ cols.transpose(1, 2).unsqueeze(1)
    return out.round_().clamp_(0, 255).to(torch.uint8)


class DeviceImages:
    """A data set's images as one uint8 (N, 3, H, W) tensor on the device (smaller images sit in
    the top-left corner, their own sizes kept), cut into each step's training crops."""

    def __init__(self, images: torch.Tensor, sizes: torch.Tensor, size: int, scale: tuple[float, float],
                 hflip: bool, seed: int):
        self.images, self.sizes = images, sizes.cpu()
        self.size, self.scale, self.hflip, self.seed = size, scale, hflip, seed

    def __len__(self) -> int:
        return self.images.shape[0]

    def boxes(self, indices: torch.Tensor, step: int) -> torch.Tensor:
        """The global batch's boxes for this step (every process draws them all)."""
        return draw_boxes(self.sizes[indices], self.scale, self.hflip, crop_generator(self.seed, step))

    def crops(self, indices: torch.Tensor, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """This process's uint8 crops, (B, 3, S, S) on the device, for the global batch ``indices``."""
        b = indices.shape[0] // world
        mine = slice(rank * b, (rank + 1) * b)
        return resized_crops(self.images, indices[mine], self.boxes(indices, step)[mine], self.size)


def device_images(source: Dataset, cfg: DataConfig, seed: int, device: torch.device) -> DeviceImages:
    """The training images of ``source`` (an in-memory array, a folder, or a subset of either)
    on ``device``. Refuses other data sets, and sets too big for the device, in one line."""
    base, index = source, None
    if isinstance(source, Subset):
        base, index = source.dataset, list(source.indices)
    if isinstance(base, ArrayDataset):
        arr = base.images if index is None else base.images[index]
        images = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
        sizes = torch.tensor(images.shape[-2:]).expand(images.shape[0], 2)
    elif isinstance(base, ImageFolder):
        ids = range(len(base)) if index is None else index
        log.info("data.on_device: decoding %d images into memory", len(ids))
        decoded = [base.load(i) for i in ids]
        sizes = torch.tensor([im.shape[-2:] for im in decoded])
        images = torch.zeros(len(decoded), 3, int(sizes[:, 0].max()), int(sizes[:, 1].max()), dtype=torch.uint8)
        for k, im in enumerate(decoded):
            images[k, :, :im.shape[-2], :im.shape[-1]] = im
    else:
        raise ConfigError(f"data.on_device: only in-memory data sets (cifar10, synthetic, folder) can live on the "
                          f"device, not {type(base).__name__}; set data.on_device=false")
    gib = images.numel() / 2**30
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device.index)[0] / 2**30  # index None: the current device
        if gib > free / 2:
            raise ConfigError(f"data.on_device: the {images.shape[0]} images take {gib:.1f} GiB as one uint8 array, "
                              f"more than half of the {free:.1f} GiB free on {device}; set data.on_device=false "
                              "(crops in the loader's workers) or train on data.subset=N images")
    log.info("data.on_device: %d images, %.2f GiB as uint8 (%d x %d) on %s", images.shape[0], gib,
             images.shape[-2], images.shape[-1], device)
    return DeviceImages(images.to(device).contiguous(), sizes, cfg.image_size, cfg.crop_scale, cfg.hflip, seed)
