"""The batched photometric ops of the paper's action families (``iwm.actions.photometric``):
colour jitter (brightness, contrast, saturation, hue), grayscale, Gaussian blur, solarisation.

They run on float images in [0, 1], shape (B, 3, H, W), with one factor per sample, on
whatever device the images are on (one kernel per op for the whole batch, not a Python loop per
image), with the semantics of ``torchvision.transforms.v2.functional``; :func:`apply_reference`
is the per-image torchvision path they are tested against.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .config import AugConfig

SOLARIZE_THRESHOLD = 0.5
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision


def blur_kernel_size(cfg: AugConfig, image_size: int) -> int:
    """Odd kernel covering +-3 sigma of the widest blur, no larger than the image."""
    return min(2 * math.ceil(3 * cfg.blur_sigma[1]) + 1, image_size - 1 + image_size % 2)


# ----------------------------------------------------------------------------------------------
# batched ops on float images in [0, 1], shape (B, 3, H, W); factors shape (B,)


def _bcast(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    r = _bcast(ratio).to(a.dtype)
    return (r * a + (1.0 - r) * b).clamp_(0.0, 1.0)


def to_gray(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(dim=-3)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(-3)


def adjust_brightness(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(img, torch.zeros_like(img), f)


def adjust_contrast(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = to_gray(img).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, f)


def adjust_saturation(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(img, to_gray(img), f)


def _rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(dim=-3)
    maxc, minc = img.amax(dim=-3), img.amin(dim=-3)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


@functools.cache
def _hsv_sectors(device: torch.device) -> torch.Tensor:
    """Per output channel (r, g, b), the plane (0 v, 1 q, 2 p, 3 t) each of the 6 hue sectors
    takes; one copy per device, so that no step waits on a host-to-device copy."""
    return torch.tensor([[0, 1, 2, 2, 3, 0], [3, 0, 0, 1, 2, 2], [2, 2, 3, 0, 0, 1]], device=device)


def _hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    h, s, v = img.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64)
    i = torch.where(i == 6, 0, i)  # h * 6 rounds up to 6 for h just below 1: sector 0 again
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # each channel of each pixel is one of v, q, p, t, chosen by the pixel's sector: a gather
    # (not a one-hot product over the six sectors: several times faster on a CPU, same numbers)
    planes = torch.stack((v, q, p, t), dim=-3)
    which = _hsv_sectors(i.device)[:, i]  # (3, ..., H, W) plane index per channel
    return planes.gather(-3, which.movedim(0, -3))


def adjust_hue(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(img)
    h = torch.remainder(hsv[:, 0] + _bcast(f)[:, 0].to(img.dtype), 1.0)
    return _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


def grayscale(img: torch.Tensor) -> torch.Tensor:
    return to_gray(img).expand_as(img).contiguous()


def gaussian_blur(img: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (depthwise conv, reflect padding)."""
    b, c, h, w = img.shape
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, device=img.device, dtype=img.dtype)
    k = torch.exp(-0.5 * (x.view(1, -1) / sigma.view(-1, 1).to(img.dtype)).pow(2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    pad = kernel_size // 2
    out = F.pad(img.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    out = F.conv2d(out, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    return out.view(b, c, h, w)


def solarize(img: torch.Tensor) -> torch.Tensor:
    return torch.where(img >= SOLARIZE_THRESHOLD, 1.0 - img, img)


JITTER_FNS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


NEUTRAL = (1.0, 1.0, 1.0, 0.0)  # jitter factors that leave an image unchanged


def apply_reference(y: torch.Tensor, t: dict[str, dict[str, torch.Tensor]], kernel_size: int) -> torch.Tensor:
    """The paper's families' transformation ``t`` (``{"jitter": ..., "grayscale": ..., "blur": ...,
    "solarize": ...}`` parameters), one image at a time with torchvision's functional ops (the
    usual per-image pipeline); kept as the reference the batched families are tested against."""
    import torchvision.transforms.v2.functional as TF

    out = []
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    j = t["jitter"]
    for i in range(y.shape[0]):
        img = y[i]
        vals = (j["brightness"][i], j["contrast"][i], j["saturation"][i], j["hue"][i])
        for op in j["order"][i].tolist():
            img = ops[op](img, float(vals[op]))
        if t["grayscale"]["on"][i]:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if t["blur"]["on"][i]:
            s = float(t["blur"]["sigma"][i])
            img = TF.gaussian_blur(img, [kernel_size, kernel_size], [s, s])
        if t["solarize"]["on"][i]:
            img = TF.solarize(img, SOLARIZE_THRESHOLD)
        out.append(img)
    return torch.stack(out)
