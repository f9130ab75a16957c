import pytest
import torch

from iwm import config
from iwm.masks import MultiBlockMasker, distinct_targets
from iwm.models import IWM, Predictor, build_encoder, build_predictor
from iwm.actions import ActionSet
from iwm.config import AugConfig

ACTION_DIM = ActionSet.from_config(AugConfig(), 16).dim  # the paper's families: 7 numbers


def _predictor(conditioning):
    torch.manual_seed(0)
    return Predictor(grid=4, enc_dim=32, width=32, depth=2, num_heads=2, conditioning=conditioning).eval()


@pytest.mark.parametrize("conditioning,changes", [("none", False), ("sequence", True), ("feature", True)])
def test_predictor_depends_on_action_only_when_conditioned(conditioning, changes):
    p = _predictor(conditioning)
    assert p.action_dim == ACTION_DIM  # the default: the paper's a_x->y
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(3, 5, 32, generator=g)
    ctx_idx = torch.tensor([[0, 1, 2, 3, 4]] * 3)
    tgt_idx = torch.tensor([[10, 11, 14]] * 3)
    a1 = torch.zeros(3, ACTION_DIM)
    a2 = torch.rand(3, ACTION_DIM, generator=g)
    out1 = p(ctx, ctx_idx, tgt_idx, a1)
    out2 = p(ctx, ctx_idx, tgt_idx, a2)
    assert out1.shape == (3, 3, 32)
    assert (not torch.allclose(out1, out2, atol=1e-6)) == changes


def test_target_encoder_gets_no_gradient_and_follows_ema(tiny_overrides):
    cfg = config.from_dict(None, tiny_overrides)
    torch.manual_seed(0)
    model = IWM(build_encoder(cfg), build_predictor(cfg))
    assert model.predictor.action_dim == ActionSet.from_config(cfg.aug, cfg.data.image_size).dim == ACTION_DIM
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g)
    masks = MultiBlockMasker(cfg.mask, 4)(4, g)
    loss = model(x, y, torch.rand(4, ACTION_DIM, generator=g), masks)
    loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())

    with torch.no_grad():  # move the encoder, then check theta_bar <- m theta_bar + (1 - m) theta
        for p in model.encoder.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    before = [p.clone() for p in model.target_encoder.parameters()]
    model.update_target(0.9)
    for tb, t, after in zip(before, model.encoder.parameters(), model.target_encoder.parameters()):
        assert torch.allclose(after, 0.9 * tb + 0.1 * t, atol=1e-6)


def test_encoder_is_a_timm_vit_with_masked_forward(tiny_overrides):
    import timm.models.vision_transformer as tv

    cfg = config.from_dict(None, tiny_overrides)
    enc = build_encoder(cfg).eval()
    assert isinstance(enc, tv.VisionTransformer)
    img = torch.randn(2, 3, 16, 16)
    full = enc.tokens(img)
    assert full.shape == (2, 16, 32)
    keep = torch.tensor([[0, 3, 5], [1, 2, 15]])
    assert enc.tokens(img, keep).shape == (2, 3, 32)
    assert not enc.pos_embed.requires_grad


@pytest.mark.parametrize("conditioning", ["none", "sequence", "feature"])
def test_context_padding_does_not_change_the_prediction(tiny_overrides, conditioning):
    """A sample padded to a longer context (as in a batch) predicts what it predicts alone."""
    cfg = config.from_dict(None, tiny_overrides + [f"predictor.conditioning={conditioning}"])
    torch.manual_seed(0)
    enc, pred = build_encoder(cfg).eval(), build_predictor(cfg).eval()
    img = torch.randn(1, 3, 16, 16)
    ctx = torch.tensor([[0, 1, 4, 5, 6]])
    tgt = torch.tensor([[10, 11, 14, 15]])
    action = torch.randn(1, ACTION_DIM)
    with torch.no_grad():
        alone = pred(enc.tokens(img, ctx), ctx, tgt, action)
        padded_idx = torch.cat([ctx, torch.zeros(1, 3, dtype=torch.long)], 1)  # three padding entries
        valid = torch.tensor([[True] * 5 + [False] * 3])
        z = enc.tokens(img, padded_idx, valid)
        padded = pred(z, padded_idx, tgt, action, valid)
        leaky = pred(z, padded_idx, tgt, action)  # the padding attended to: a different answer
    assert torch.allclose(z[:, :5], enc.tokens(img, ctx), atol=1e-6)
    assert torch.allclose(padded, alone, atol=1e-6)
    assert (leaky - alone).abs().max() > 1e-4


def test_feature_conditioning_residual_keeps_the_mask_token(tiny_overrides):
    cfg = config.from_dict(None, tiny_overrides + ["predictor.conditioning=feature", "predictor.cond_residual=true"])
    pred = build_predictor(cfg).eval()
    torch.nn.init.zeros_(pred.cond[-1].weight)
    torch.nn.init.zeros_(pred.cond[-1].bias)
    ref = build_predictor(config.from_dict(None, tiny_overrides + ["predictor.conditioning=none"])).eval()
    ref.load_state_dict({k: v for k, v in pred.state_dict().items() if not k.startswith("cond.")})
    ctx, tgt = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[8, 9]])
    z = torch.randn(1, 4, 32)
    with torch.no_grad():  # a zero last layer: the action changes nothing, the position gets through
        assert torch.allclose(pred(z, ctx, tgt, torch.randn(1, ACTION_DIM)), ref(z, ctx, tgt), atol=1e-6)


def test_length_groups_give_the_same_loss_and_gradients(tiny_overrides):
    cfg = config.from_dict(None, tiny_overrides + ["mask.num_targets=2"])
    masks = MultiBlockMasker(cfg.mask, 4)(8, torch.Generator().manual_seed(3))
    assert masks.context_valid is not None  # the batch really is padded
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)
    a = torch.randn(8, ACTION_DIM, generator=g)
    results = []
    for groups in (1, 3):
        torch.manual_seed(0)
        model = IWM(build_encoder(cfg), build_predictor(cfg), per_block=False, length_groups=groups)
        loss = model(x, y, a, masks)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.encoder.parameters() if p.grad is not None]))
    (l1, g1), (l3, g3) = results
    assert torch.allclose(l1, l3, atol=1e-6)
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(g1, g3))


def _every_block_in_the_sequence(model: IWM, x, y, a, masks):
    """The one-pass loss as it reads: every block's mask tokens in the sequence, overlaps twice."""
    from iwm.models.encoder import gather_tokens

    ctx = model.encoder.tokens(x, masks.context, masks.context_valid)
    tidx = masks.targets.flatten(1)
    pred = model.predictor(ctx, masks.context, tidx, a, masks.context_valid)
    return model.loss(pred, gather_tokens(model.targets(y), tidx))


@pytest.mark.parametrize("families", ["photometric", "geometric"])
def test_one_pass_predicts_each_overlapping_patch_once_with_the_same_loss(tiny_overrides, families):
    """Patches in two target blocks are predicted once, weighted by their count: the loss and
    gradients of every block's copy in the sequence, at less cost."""
    extra = ["aug.families=[jitter,grayscale,blur,solarize,crop,hflip,rot90,rotate]"] if families == "geometric" else []
    cfg = config.from_dict(None, tiny_overrides + ["mask.num_targets=4", "mask.target_scale=[0.2,0.3]", *extra])
    g = torch.Generator().manual_seed(1)
    masks = MultiBlockMasker(cfg.mask, 4)(8, g)
    tidx, counts = distinct_targets(masks.targets, 16)
    assert counts.sum() == masks.targets[0].numel() * 8 and (counts > 1).any()  # overlaps to save
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)
    actions = ActionSet.from_config(cfg.aug, 16)
    a = actions.encode(*actions.sample_pair(8, g)) if actions.geometric else torch.randn(8, ACTION_DIM, generator=g)
    torch.manual_seed(0)
    model = IWM(build_encoder(cfg), build_predictor(cfg), per_block=False)
    with torch.no_grad():  # weights far from their init, so that every token's output matters
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    results = []
    for loss_of in (lambda: model(x, y, a, masks), lambda: _every_block_in_the_sequence(model, x, y, a, masks)):
        model.zero_grad()
        loss = loss_of()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (once, g1), (copies, g2) = results
    assert torch.allclose(once, copies, rtol=1e-5)
    assert len(g1) == len(g2) and all(torch.allclose(u, v, rtol=1e-4, atol=1e-6) for u, v in zip(g1, g2))
    with torch.no_grad():  # the counts are what makes it exact: without them the other tokens change
        ctx = model.encoder.tokens(x, masks.context, masks.context_valid)
        weighted = model.predictor(ctx, masks.context, tidx, a, masks.context_valid, target_counts=counts)
        once_each = model.predictor(ctx, masks.context, tidx, a, masks.context_valid, target_counts=(counts > 0).long())
    assert (weighted - once_each).abs().max() > 1e-4


@pytest.mark.parametrize("per_block,groups", [(False, 1), (False, 3), (True, 1)])
def test_a_moved_views_padded_targets_give_the_loss_of_its_real_entries_alone(tiny_overrides, per_block, groups):
    """A moved view's blocks keep different numbers of patches in y; the padding must change
    nothing: the loss is the mean over the real entries, each predicted as if alone with its block."""
    from iwm.models.encoder import gather_tokens

    cfg = config.from_dict(None, tiny_overrides + ["mask.num_targets=2", "mask.target_scale=[0.3,0.4]",
                                                   "aug.families=[jitter,crop,rotate]", "aug.crop_prob=1",
                                                   "aug.rotate_prob=1"])
    g = torch.Generator().manual_seed(2)
    actions = ActionSet.from_config(cfg.aug, 16)
    src, tgt = actions.sample_pair(8, g)
    masks = MultiBlockMasker(cfg.mask, 4)(8, g, actions.support(tgt, 4, 16))
    valid = masks.target_valid
    assert valid is not None and (~valid).any() and valid.any()  # padded, with real entries
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)
    a = actions.encode(src, tgt)
    torch.manual_seed(0)
    model = IWM(build_encoder(cfg), build_predictor(cfg), per_block=per_block, length_groups=groups).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        loss = model(x, y, a, masks)
        ctx = model.encoder.tokens(x, masks.context, masks.context_valid)
        truth = model.targets(y)
        errors = []
        for i in range(8):
            keep = masks.context[i] if masks.context_valid is None else masks.context[i][masks.context_valid[i]]
            c = ctx[i:i + 1, :len(keep)] if masks.context_valid is None else ctx[i:i + 1][:, masks.context_valid[i]]
            rows = [masks.targets[i, t][valid[i, t]] for t in range(2)]
            rows = rows if per_block else [torch.cat(rows)]
            for r in rows:
                if len(r):
                    pred = model.predictor(c, keep[None], r[None], a[i:i + 1])
                    errors.append((pred - gather_tokens(truth[i:i + 1], r[None])).pow(2).mean(-1).flatten())
    assert torch.allclose(loss, torch.cat(errors).mean(), rtol=1e-5)


def test_distinct_targets_lists_each_covered_patch_once_with_its_count():
    targets = torch.tensor([[[0, 1, 4, 5], [1, 2, 5, 6]], [[8, 9, 12, 13], [10, 11, 14, 15]]])
    idx, counts = distinct_targets(targets, 16)
    assert idx.tolist() == [[0, 1, 2, 4, 5, 6, 0, 0], [8, 9, 10, 11, 12, 13, 14, 15]]
    assert counts.tolist() == [[1, 2, 1, 1, 2, 1, 0, 0], [1] * 8]
    # off the CPU the width is not read back: the same patches and counts, then more padding
    wide_idx, wide_counts = distinct_targets(targets, 16, sync_free=True)
    assert wide_idx.shape == (2, 8) and wide_idx.tolist() == idx.tolist() and wide_counts.tolist() == counts.tolist()
    wide_idx, wide_counts = distinct_targets(targets[:1], 16, sync_free=True)
    assert wide_idx.tolist() == [[0, 1, 2, 4, 5, 6, 0, 0]] and wide_counts.tolist() == [[1, 2, 1, 1, 2, 1, 0, 0]]


def test_last_block_computes_only_the_tokens_asked_for(tiny_overrides):
    """run_blocks(out_at=...) returns what the whole last block would, at those tokens, with
    the same gradients, whether ``out_at`` is a slice or per-sample indices."""
    from iwm.models.encoder import _plain_block, run_blocks

    cfg = config.from_dict(None, tiny_overrides)
    torch.manual_seed(0)
    blocks = build_encoder(cfg).blocks
    assert _plain_block(blocks[-1])  # the shortcut is what runs here, not the whole block
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 32, generator=g, requires_grad=True)
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[0, 5:], valid[1, 7:] = False, False
    at = torch.tensor([[0, 2, 4], [8, 1, 3], [5, 6, 7]])
    for where, pick in ((slice(-4, None), lambda z: z[:, -4:]), (at, lambda z: torch.gather(z, 1, at[..., None].expand(-1, -1, 32)))):
        full = pick(run_blocks(blocks, x, valid))
        (gfull,) = torch.autograd.grad(full.square().sum(), x)
        part = run_blocks(blocks, x, valid, out_at=where)
        (gpart,) = torch.autograd.grad(part.square().sum(), x)
        assert torch.allclose(part, full, atol=1e-5) and torch.allclose(gpart, gfull, atol=1e-5)
    enc = build_encoder(cfg).eval()  # and the encoder's tokens at some positions
    img = torch.randn(3, 3, 16, 16, generator=g)
    with torch.no_grad():
        assert torch.allclose(enc.tokens(img, at=at), torch.gather(enc.tokens(img), 1, at[..., None].expand(-1, -1, 32)),
                              atol=1e-5)
