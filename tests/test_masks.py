import torch

from iwm.config import MaskConfig
from iwm.masks import MultiBlockMasker


def test_sizes_and_no_overlap():
    cfg = MaskConfig(num_targets=4, target_scale=(0.15, 0.2), context_scale=(0.85, 1.0), min_context=10)
    grid = 14
    masks = MultiBlockMasker(cfg, grid)(32, torch.Generator().manual_seed(0))
    b, t, nt = masks.targets.shape
    assert (b, t) == (32, 4)
    assert 0.05 * grid * grid <= nt <= 0.3 * grid * grid  # scale 0.15-0.2 of 196, rounding aside
    assert masks.context.shape[0] == 32 and masks.context.shape[1] >= 10
    lengths = masks.context_lengths()
    for i in range(b):
        real = masks.context[i, : lengths[i]].tolist()
        ctx = set(real)
        assert len(ctx) == len(real) >= 10  # no duplicates, at least min_context
        for j in range(t):
            tgt = masks.targets[i, j].tolist()
            assert len(set(tgt)) == nt
            assert ctx.isdisjoint(tgt)
        assert max(ctx) < grid * grid and masks.targets.max() < grid * grid


def test_seeded():
    m = MultiBlockMasker(MaskConfig(min_context=4), 8)
    a = m(8, torch.Generator().manual_seed(1))
    b = m(8, torch.Generator().manual_seed(1))
    c = m(8, torch.Generator().manual_seed(2))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not (a.context.shape == c.context.shape and torch.equal(a.context, c.context)
                and torch.equal(a.targets, c.targets))


def test_targets_are_rectangles_of_one_size():
    cfg = MaskConfig(num_targets=3, target_scale=(0.1, 0.3), target_aspect=(0.5, 2.0), min_context=4)
    grid = 10
    m = MultiBlockMasker(cfg, grid)(64, torch.Generator().manual_seed(3))
    nt = m.targets.shape[-1]
    for idx in m.targets.flatten(0, 1):
        rows, cols = idx // grid, idx % grid
        h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert h * w == nt and len(set(idx.tolist())) == nt  # a full h x w block
        assert torch.equal(idx, idx.sort().values)  # in patch order


def test_context_falls_back_to_uncovered_patches_when_blocks_crowd_it():
    # four targets of ~40 % each leave too little for min_context on most draws
    cfg = MaskConfig(num_targets=4, target_scale=(0.4, 0.4), context_scale=(0.3, 0.3), min_context=30)
    m = MultiBlockMasker(cfg, 8)(16, torch.Generator().manual_seed(0))
    assert m.context.shape[1] >= 1
    for i in range(16):
        real = m.context[i, : m.context_lengths()[i]]
        assert set(real.tolist()).isdisjoint(m.targets[i].flatten().tolist())


def test_every_sample_keeps_its_whole_context():
    # a context block of the whole grid: each context must be exactly the patches no target covers
    cfg = MaskConfig(num_targets=4, target_scale=(0.15, 0.2), context_scale=(1.0, 1.0), min_context=4)
    grid = 8
    m = MultiBlockMasker(cfg, grid)(128, torch.Generator().manual_seed(0))
    lengths = m.context_lengths()
    assert lengths.min() < lengths.max()  # lengths differ, so nothing was cut to the shortest
    for i in range(128):
        kept = m.context[i][m.context_valid[i]].tolist()
        uncovered = set(range(grid * grid)) - set(m.targets[i].flatten().tolist())
        assert kept == sorted(uncovered)


def test_padding_sits_after_the_real_context_and_slices_with_it():
    m = MultiBlockMasker(MaskConfig(min_context=4), 8)(16, torch.Generator().manual_seed(4))
    valid = m.context_valid
    assert valid is not None and valid.any(1).all()
    # True entries first, then padding: a prefix of each row
    assert torch.equal(valid, valid.cumprod(1).bool())
    part = m[4:8]
    assert torch.equal(part.context, m.context[4:8]) and torch.equal(part.context_valid, valid[4:8])
    assert torch.equal(part.context_lengths(), valid[4:8].sum(1))


def test_cut_context_is_ijepa_rule():
    cfg = MaskConfig(num_targets=4, target_scale=(0.15, 0.2), context_scale=(1.0, 1.0), min_context=4,
                     cut_context=True)
    m = MultiBlockMasker(cfg, 8)(64, torch.Generator().manual_seed(0))
    assert m.context_valid is None
    for i in range(64):  # the same length for all, each a subset of its uncovered patches
        uncovered = set(range(64)) - set(m.targets[i].flatten().tolist())
        assert set(m.context[i].tolist()) <= uncovered
        assert torch.equal(m.context[i], m.context[i].sort().values)
