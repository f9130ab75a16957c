"""The photometric transformation between the two views of an image.

From the crop c of an image, the target view y = J_y(c) and the source view x =
D(J_x(c)), where J_* are colour jitters (brightness, contrast, saturation, hue in a random
order per sample) and D the destructive transformations of the source only (grayscale, blur,
solarisation, each with a probability). Parameters are sampled per sample and recorded
(:class:`PhotometricParams`, one per view), so the transformation is *replayable*:
:func:`apply` with the same parameters gives the same view, bit for bit. The ops run batched
on whatever device the images are on (one kernel per op for the whole batch, not a Python loop
per image), with the semantics of ``torchvision.transforms.v2.functional``;
:func:`apply_reference` is the per-image torchvision path they are tested against.

The action a_x->y the predictor is conditioned on (:func:`action`) has this layout
(``ACTION_NAMES``): the jitter parameters of y minus those of x, then one flag per destructive
transformation that x received (what must be undone)::

    0 brightness   b_y - b_x   (factors; 1 = unchanged)
    1 contrast     c_y - c_x
    2 saturation   s_y - s_x
    3 hue          h_y - h_x   (shifts; 0 = unchanged)
    4 grayscale    1 if x was turned gray, else 0
    5 blur         1 if x was blurred, else 0
    6 solarize     1 if x was solarised, else 0

The identity transformation (strength 0: I-JEPA) has the neutral action: all zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .config import AugConfig

ACTION_NAMES = ("brightness", "contrast", "saturation", "hue", "grayscale", "blur", "solarize")
ACTION_DIM = len(ACTION_NAMES)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
SOLARIZE_THRESHOLD = 0.5
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision


@dataclass
class PhotometricParams:
    """Per-sample parameters of one batch of corruptions (all tensors have leading size B)."""

    order: torch.Tensor  # (B, 4) long: permutation of JITTER_OPS applied in this order
    brightness: torch.Tensor  # (B,) factors; 1 = unchanged
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor  # (B,) shift in [-0.5, 0.5]; 0 = unchanged
    grayscale: torch.Tensor  # (B,) bool
    blur: torch.Tensor  # (B,) bool
    blur_sigma: torch.Tensor  # (B,) used where blur
    solarize: torch.Tensor  # (B,) bool

    def __len__(self) -> int:
        return self.order.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PhotometricParams":
        return PhotometricParams(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                    for f in fields(self)})

    def __getitem__(self, idx) -> "PhotometricParams":
        return PhotometricParams(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def action(self, target: "PhotometricParams | None" = None) -> torch.Tensor:
        """a_x->y with these as the source's parameters and ``target``'s as y's (None: an
        untouched y). Shape (B, ACTION_DIM), float32; layout in the module docstring."""
        if target is None:
            target = PhotometricParams.identity(len(self), self.order.device)
        return torch.stack([
            target.brightness - self.brightness, target.contrast - self.contrast,
            target.saturation - self.saturation, target.hue - self.hue,
            self.grayscale.float(), self.blur.float(), self.solarize.float(),
        ], dim=1).float()

    @staticmethod
    def identity(batch: int, device: torch.device | str = "cpu") -> "PhotometricParams":
        ones, zeros = torch.ones(batch, device=device), torch.zeros(batch, device=device)
        no = torch.zeros(batch, dtype=torch.bool, device=device)
        order = torch.arange(4, device=device).repeat(batch, 1)
        return PhotometricParams(order, ones, ones.clone(), ones.clone(), zeros, no, no.clone(),
                                 ones.clone(), no.clone())


def blur_kernel_size(cfg: AugConfig, image_size: int) -> int:
    """Odd kernel covering +-3 sigma of the widest blur, no larger than the image."""
    return min(2 * math.ceil(3 * cfg.blur_sigma[1]) + 1, image_size - 1 + image_size % 2)


class PhotometricSampler:
    """Draws per-sample corruption parameters from an :class:`AugConfig`."""

    def __init__(self, cfg: AugConfig, jitter_every_target: bool = False):
        # jitter_every_target: every target view is jittered whatever the strength (the MRR
        # bank, whose entries must all differ from each other and from the untouched image)
        self.cfg = cfg
        self.jitter_every_target = jitter_every_target

    def _scaled(self) -> dict[str, float]:
        c, s = self.cfg, self.cfg.strength
        return {
            "jitter_prob": min(1.0, c.jitter_prob * s), "target_jitter_prob": min(1.0, c.target_jitter_prob * s),
            "brightness": c.brightness * s, "contrast": c.contrast * s, "saturation": c.saturation * s,
            "hue": c.hue * s,
            "grayscale_prob": min(1.0, c.grayscale_prob * s), "blur_prob": min(1.0, c.blur_prob * s),
            "solarize_prob": min(1.0, c.solarize_prob * s),
        }

    def sample_pair(self, batch: int, generator: torch.Generator) -> tuple[PhotometricParams, PhotometricParams]:
        """(source x's parameters, target y's parameters) for a batch; a_x->y is
        ``source.action(target)``."""
        source = self.sample(batch, generator)
        return source, self.sample(batch, generator, target=True)

    def sample(self, batch: int, generator: torch.Generator, target: bool = False) -> PhotometricParams:
        """One view's parameters: the source's (jitter and destructive ops) or, with
        ``target``, the target's (jitter only)."""
        v = self._scaled()
        if target:
            jitter = 1.0 if self.jitter_every_target else v["target_jitter_prob"]
            v = {**v, "jitter_prob": jitter, "grayscale_prob": 0.0, "blur_prob": 0.0,
                 "solarize_prob": 0.0}
        g = generator

        def u(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(batch, generator=g)

        def coin(p: float) -> torch.Tensor:
            return torch.rand(batch, generator=g) < p

        jitter = coin(v["jitter_prob"])
        order = torch.argsort(torch.rand(batch, 4, generator=g), dim=1)
        factors = {n: u(1 - v[n], 1 + v[n]) for n in ("brightness", "contrast", "saturation")}
        hue = u(-v["hue"], v["hue"])
        one = torch.ones(batch)
        params = PhotometricParams(
            order=order,
            brightness=torch.where(jitter, factors["brightness"], one),
            contrast=torch.where(jitter, factors["contrast"], one),
            saturation=torch.where(jitter, factors["saturation"], one),
            hue=torch.where(jitter, hue, torch.zeros(batch)),
            grayscale=coin(v["grayscale_prob"]),
            blur=coin(v["blur_prob"]),
            blur_sigma=u(*self.cfg.blur_sigma),
            solarize=coin(v["solarize_prob"]),
        )
        return params


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
    maxc, _ = img.max(dim=-3)
    minc, _ = img.min(dim=-3)
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


def _hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    h, s, v = img.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    sector = i.unsqueeze(-3) == torch.arange(6, device=i.device).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=-3)
    a2 = torch.stack((t, v, v, q, p, p), dim=-3)
    a3 = torch.stack((p, p, t, v, v, q), dim=-3)
    a4 = torch.stack((a1, a2, a3), dim=-4)
    return torch.einsum("...ijk,...xijk->...xjk", sector.to(img.dtype), a4)


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


_JITTER_FNS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


_NEUTRAL = (1.0, 1.0, 1.0, 0.0)  # jitter factors that leave an image unchanged


def apply(img: torch.Tensor, p: PhotometricParams, kernel_size: int, sync_free: bool | None = None) -> torch.Tensor:
    """Transform a batch of float images in [0, 1], (B, 3, H, W), with per-sample parameters.

    Two equivalent strategies: on the CPU, each op runs only on the samples that need it (the
    selection reads back which those are); on an accelerator (``sync_free``, the default off the
    CPU), each op runs on the whole batch and ``torch.where`` keeps its result where it applies,
    which spends some arithmetic to never stall the host on a device read-back."""
    if sync_free is None:
        sync_free = img.device.type != "cpu"
    factors = (p.brightness, p.contrast, p.saturation, p.hue)
    # (flag, op(images, blur sigmas)) in the order they apply
    destructive = ((p.grayscale, lambda z, _: grayscale(z)),
                   (p.blur, lambda z, sigma: gaussian_blur(z, sigma, kernel_size)),
                   (p.solarize, lambda z, _: solarize(z)))
    if sync_free:
        x = img
        for slot in range(4):
            out = x
            for op in range(4):
                sel = (p.order[:, slot] == op) & (factors[op] != _NEUTRAL[op])
                out = torch.where(_bcast(sel), _JITTER_FNS[op](x, factors[op]), out)
            x = out
        for flag, fn in destructive:
            x = torch.where(_bcast(flag), fn(x, p.blur_sigma), x)
        return x
    x = img.clone()
    for slot in range(4):
        for op in range(4):
            sel = (p.order[:, slot] == op) & (factors[op] != _NEUTRAL[op])
            if sel.any():  # skipping empty ops is worth far more on a CPU than the read-back costs
                idx = sel.nonzero().squeeze(1)
                x[idx] = _JITTER_FNS[op](x[idx], factors[op][idx])
    for flag, fn in destructive:
        if flag.any():
            idx = flag.nonzero().squeeze(1)
            x[idx] = fn(x[idx], p.blur_sigma[idx])
    return x


def apply_reference(y: torch.Tensor, p: PhotometricParams, kernel_size: int) -> torch.Tensor:
    """The same transformation, one image at a time with torchvision's functional ops (the usual
    per-image pipeline); kept as the reference the batched path is tested against."""
    import torchvision.transforms.v2.functional as TF

    out = []
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(y.shape[0]):
        img = y[i]
        vals = (p.brightness[i], p.contrast[i], p.saturation[i], p.hue[i])
        for op in p.order[i].tolist():
            img = ops[op](img, float(vals[op]))
        if p.grayscale[i]:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if p.blur[i]:
            s = float(p.blur_sigma[i])
            img = TF.gaussian_blur(img, [kernel_size, kernel_size], [s, s])
        if p.solarize[i]:
            img = TF.solarize(img, SOLARIZE_THRESHOLD)
        out.append(img)
    return torch.stack(out)
