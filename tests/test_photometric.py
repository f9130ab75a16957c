import torch

from iwm.config import AugConfig
from iwm.photometric import (ACTION_DIM, ACTION_NAMES, PhotometricParams, PhotometricSampler, apply,
                             apply_reference, blur_kernel_size)


def _images(b=6, size=16, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _strong():
    return AugConfig(strength=1.0, jitter_prob=1.0, grayscale_prob=0.5, blur_prob=0.5, solarize_prob=0.5,
                     blur_sigma=(0.1, 1.0))


def test_replay_is_exact():
    cfg = _strong()
    y = _images()
    p = PhotometricSampler(cfg).sample(6, torch.Generator().manual_seed(3))
    k = blur_kernel_size(cfg, 16)
    x1 = apply(y, p, k)
    # record the parameters as plain tensors, rebuild them, replay
    recorded = {name: getattr(p, name).clone() for name in p.__dataclass_fields__}
    x2 = apply(y, PhotometricParams(**recorded), k)
    assert torch.equal(x1, x2)
    # the same seed draws the same parameters
    p2 = PhotometricSampler(cfg).sample(6, torch.Generator().manual_seed(3))
    assert torch.equal(apply(y, p2, k), x1)
    assert not torch.equal(x1, y)


def test_identity_has_neutral_action_and_leaves_image():
    y = _images()
    for params in (PhotometricParams.identity(6),
                   PhotometricSampler(AugConfig(strength=0.0)).sample(6, torch.Generator().manual_seed(0))):
        assert params.action().shape == (6, ACTION_DIM) == (6, len(ACTION_NAMES))
        assert torch.equal(params.action(), torch.zeros(6, ACTION_DIM))
        assert torch.equal(apply(y, params, 3), y)


def test_action_layout():
    p = PhotometricParams.identity(1)
    p.brightness[:] = 1.3
    p.hue[:] = 0.05
    p.solarize[:] = True
    a = p.action()[0]
    assert torch.allclose(a, torch.tensor([-0.3, 0, 0, -0.05, 0, 0, 1.0]))


def test_batched_matches_torchvision_per_image():
    cfg = _strong()
    y = _images(b=16, size=20, seed=1)
    p = PhotometricSampler(cfg).sample(16, torch.Generator().manual_seed(5))
    k = blur_kernel_size(cfg, 20)
    fast = apply(y, p, k)
    ref = apply_reference(y, p, k)
    assert (fast - ref).abs().max() < 1e-4


def test_strength_scales_ranges():
    gen = torch.Generator().manual_seed(0)
    weak = PhotometricSampler(AugConfig(strength=0.25)).sample(2000, gen)
    strong = PhotometricSampler(AugConfig(strength=1.0)).sample(2000, gen)
    assert weak.action()[:, :4].abs().max() < strong.action()[:, :4].abs().max()
    assert weak.grayscale.float().mean() < strong.grayscale.float().mean()
    assert (weak.brightness - 1).abs().max() <= 0.1 + 1e-6


def test_pair_action_is_jitter_difference_plus_source_flags():
    cfg = _strong()
    src, tgt = PhotometricSampler(cfg).sample_pair(64, torch.Generator().manual_seed(2))
    assert not (tgt.grayscale.any() or tgt.blur.any() or tgt.solarize.any())  # y is only jittered
    a = src.action(tgt)
    assert torch.allclose(a[:, 0], tgt.brightness - src.brightness)
    assert torch.allclose(a[:, 3], tgt.hue - src.hue)
    assert torch.equal(a[:, 4:].bool(), torch.stack([src.grayscale, src.blur, src.solarize], 1))
    assert torch.equal(src.action(src)[:, :4], torch.zeros(64, 4))


def test_sync_free_path_agrees_with_indexed_path():
    # the accelerator path (no read-back of which samples an op touches) checked on the CPU
    cfg = _strong()
    y = _images(b=16, size=20, seed=3)
    k = blur_kernel_size(cfg, 20)
    for params in PhotometricSampler(cfg).sample_pair(16, torch.Generator().manual_seed(7)):
        indexed = apply(y, params, k, sync_free=False)
        masked = apply(y, params, k, sync_free=True)
        assert (indexed - masked).abs().max() < 1e-5
        assert (masked - apply_reference(y, params, k)).abs().max() < 1e-4
    identity = PhotometricParams.identity(16)
    assert torch.equal(apply(y, identity, k, sync_free=True), y)
