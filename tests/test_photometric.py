import torch

from iwm.actions import ActionSet
from iwm.actions.family import where_each
from iwm.actions.photometric import Jitter
from iwm.config import AugConfig
from iwm.photometric import apply_reference, blur_kernel_size

# a_x->y of the paper's families, in the layout the shipped models were trained with
ACTION_NAMES = ("brightness", "contrast", "saturation", "hue", "grayscale", "blur", "solarize")


def _images(b=6, size=16, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _strong():
    return AugConfig(strength=1.0, jitter_prob=1.0, grayscale_prob=0.5, blur_prob=0.5, solarize_prob=0.5,
                     blur_sigma=(0.1, 1.0))


def _actions(cfg, image_size=16):
    return ActionSet.from_config(cfg, image_size)


def _recorded(t):
    """A transformation as plain tensors, copied: what a replay is rebuilt from."""
    return {name: {k: v.clone() for k, v in p.items()} for name, p in t.items()}


def _apply(actions, images, t, sync_free):
    """``actions.apply`` with the accelerator's sync-free path (every sample computed, ``torch.where``
    keeps the selected ones) or the CPU's indexed path forced, whatever the device."""
    x = images
    for f in actions.families:
        p = t[f.name]
        if isinstance(f, Jitter):
            x = f.apply(x, p, sync_free=sync_free)
        else:  # the source flags: grayscale, blur, solarize
            x = where_each(x, p["on"], lambda z, idx, f=f, p=p: f.op(z, p, idx), sync_free=sync_free)
    return x


def test_default_families_are_the_papers():
    actions = _actions(AugConfig())
    assert actions.names == ("jitter", "grayscale", "blur", "solarize")
    assert actions.value_names == ACTION_NAMES and actions.dim == len(ACTION_NAMES) == 7


def test_replay_is_exact():
    cfg = _strong()
    actions = _actions(cfg)
    y = _images()
    p = actions.sample(6, torch.Generator().manual_seed(3), "source")
    x1 = actions.apply(y, p)
    # record the parameters as plain tensors, rebuild them, replay
    x2 = actions.apply(y, _recorded(p))
    assert torch.equal(x1, x2)
    # the same seed draws the same parameters
    p2 = _actions(cfg).sample(6, torch.Generator().manual_seed(3), "source")
    assert torch.equal(actions.apply(y, p2), x1)
    assert not torch.equal(x1, y)


def test_identity_has_neutral_action_and_leaves_image():
    y = _images()
    zero = _actions(AugConfig(strength=0.0))  # I-JEPA: every draw is the identity
    g = torch.Generator().manual_seed(0)
    for actions, params in ((_actions(AugConfig()), _actions(AugConfig()).identity(6)),
                            (zero, zero.sample(6, g, "source")), (zero, zero.sample(6, g, "target"))):
        a = actions.encode(params, actions.identity(6))  # to an untouched target
        assert a.shape == (6, actions.dim) == (6, len(ACTION_NAMES))
        assert torch.equal(a, torch.zeros(6, actions.dim))
        assert torch.equal(actions.apply(y, params), y)


def test_action_layout():
    actions = _actions(AugConfig())
    p = actions.identity(1)
    p["jitter"]["brightness"][:] = 1.3
    p["jitter"]["hue"][:] = 0.05
    p["solarize"]["on"][:] = True
    a = actions.encode(p, actions.identity(1))[0]
    assert torch.allclose(a, torch.tensor([-0.3, 0, 0, -0.05, 0, 0, 1.0]))


def test_batched_matches_torchvision_per_image():
    cfg = _strong()
    actions = _actions(cfg, 20)
    y = _images(b=16, size=20, seed=1)
    p = actions.sample(16, torch.Generator().manual_seed(5), "source")
    k = blur_kernel_size(cfg, 20)
    assert actions.family("blur").kernel_size == k
    fast = actions.apply(y, p)
    ref = apply_reference(y, p, k)
    assert (fast - ref).abs().max() < 1e-4


def test_strength_scales_ranges():
    gen = torch.Generator().manual_seed(0)
    weak_set, strong_set = _actions(AugConfig(strength=0.25)), _actions(AugConfig(strength=1.0))
    weak = weak_set.sample(2000, gen, "source")
    strong = strong_set.sample(2000, gen, "source")
    wa = weak_set.encode(weak, weak_set.identity(2000))
    sa = strong_set.encode(strong, strong_set.identity(2000))
    assert wa[:, :4].abs().max() < sa[:, :4].abs().max()
    assert weak["grayscale"]["on"].float().mean() < strong["grayscale"]["on"].float().mean()
    assert (weak["jitter"]["brightness"] - 1).abs().max() <= 0.1 + 1e-6


def test_pair_action_is_jitter_difference_plus_source_flags():
    actions = _actions(_strong())
    src, tgt = actions.sample_pair(64, torch.Generator().manual_seed(2))
    assert not (tgt["grayscale"]["on"].any() or tgt["blur"]["on"].any() or tgt["solarize"]["on"].any())  # y: jitter only
    a = actions.encode(src, tgt)
    assert a.shape == (64, 7) and a.dtype == torch.float32
    assert torch.allclose(a[:, 0], tgt["jitter"]["brightness"] - src["jitter"]["brightness"])
    assert torch.allclose(a[:, 3], tgt["jitter"]["hue"] - src["jitter"]["hue"])
    assert torch.equal(a[:, 4:].bool(), torch.stack([src["grayscale"]["on"], src["blur"]["on"], src["solarize"]["on"]], 1))
    assert torch.equal(actions.encode(src, src)[:, :4], torch.zeros(64, 4))


def test_sync_free_path_agrees_with_indexed_path():
    # the accelerator path (no read-back of which samples an op touches) checked on the CPU
    cfg = _strong()
    actions = _actions(cfg, 20)
    y = _images(b=16, size=20, seed=3)
    k = blur_kernel_size(cfg, 20)
    for params in actions.sample_pair(16, torch.Generator().manual_seed(7)):
        indexed = _apply(actions, y, params, sync_free=False)
        assert torch.equal(indexed, actions.apply(y, params))  # the CPU's own path, as the set runs it
        masked = _apply(actions, y, params, sync_free=True)
        assert (indexed - masked).abs().max() < 1e-5
        assert (masked - apply_reference(y, params, k)).abs().max() < 1e-4
    identity = actions.identity(16)
    assert torch.equal(_apply(actions, y, identity, sync_free=True), y)
