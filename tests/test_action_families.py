"""Action families: the interface, the paper's families unchanged, the geometric families and
their masks, a family a user writes, and the per-family evaluations."""

import json
import textwrap
from pathlib import Path

import pytest
import torch

import iwm
from iwm import config
from iwm.actions import GEOMETRIC, ActionFamily, ActionSet, build_family, known_families, register
from iwm.config import AugConfig, ConfigError
from iwm.eval.mrr import chance_mrr, compute_mrr
from iwm.train import Trainer
from iwm.train.step import BatchMaker

pytestmark = pytest.mark.usefixtures("one_thread")
COMPAT = Path(__file__).parent / "data" / "action_compat.json"
ALL = ("jitter", "grayscale", "blur", "solarize", *GEOMETRIC)


class Posterize(ActionFamily):
    """A family the package does not have: the source keeps fewer bits per channel."""

    name, values, views = "posterize", ("bits_lost",), "source"

    def sample(self, batch, generator, view, always=False):
        on = torch.rand(batch, generator=generator) < (1.0 if always else 0.5)
        bits = torch.randint(1, 5, (batch,), generator=generator)
        return {"bits": torch.where(on & (view == "source"), bits, 0)}

    def identity(self, batch, device="cpu"):
        return {"bits": torch.zeros(batch, dtype=torch.long, device=device)}

    def apply(self, images, params):
        step = (2 ** params["bits"]).view(-1, 1, 1, 1)
        return torch.div((images * 255).round(), step, rounding_mode="floor") * step / 255

    def encode(self, source, target):
        return (source["bits"] - target["bits"]).float().unsqueeze(1)


def _set(*families: str, **aug) -> ActionSet:
    return ActionSet.from_config(AugConfig(families=families, **aug), 32)


# ----------------------------------------------------------------------------------------------
# the paper's families, as before


def test_default_configs_make_the_same_batches_and_shipped_models_the_same_mrr_as_before_families():
    """Figures recorded with the code before action families existed (commit 4044cc2): the
    shipped configs' training batches (views, actions, masks) and the shipped models' MRR by both
    protocols, per family, are reproduced exactly."""
    ref = json.loads(COMPAT.read_text())
    crops = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for key, want in ref["batches"].items():
        name, step = key.split("@")
        cfg = config.load(config.resolve_config(name), ["data.batch_size=8"])
        x, y, a, m = BatchMaker(cfg, 0, 1, torch.device("cpu"))(crops, int(step))
        got = [x.double().sum().item(), x.double().abs().sum().item(), y.double().sum().item(),
               a.double().sum().item(), a.double().abs().sum().item(), m.context.sum().item(),
               m.targets.sum().item(), -1 if m.context_valid is None else m.context_valid.sum().item()]
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6), key
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    run = iwm.pretrained("cifar10_equi")
    for source in ("clean", "augmented"):
        want = ref["mrr"][f"cifar10_equi/{source}"]
        r = compute_mrr(run, images=images, bank_size=16, seed=0, source=source)
        assert (r["mrr"], r["mrr_action_zeroed"]) == pytest.approx((want["mrr"], want["zeroed"]), abs=1e-9)
        for f, v in want["families"].items():
            assert r["families"][f]["mrr"] == pytest.approx(v, abs=1e-9), f


def test_the_paper_families_keep_the_seven_number_action_layout():
    s = _set("jitter", "grayscale", "blur", "solarize")
    assert s.dim == 7 and s.value_names == ("brightness", "contrast", "saturation", "hue", "grayscale", "blur",
                                            "solarize")
    assert iwm.pretrained("cifar10_equi").predictor.action_dim == 7


# ----------------------------------------------------------------------------------------------
# the interface, for every built-in family


@pytest.mark.parametrize("name", ALL)
def test_every_family_replays_encodes_the_identity_as_zeros_and_its_identity_leaves_images(name):
    s = _set(name)
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ident = s.identity(6)
    assert torch.equal(s.encode(ident, ident), torch.zeros(6, s.dim))
    assert torch.allclose(s.apply(images, ident), images, atol=1e-6)
    view = "target" if name in GEOMETRIC else "source"
    t1 = s.sample(6, torch.Generator().manual_seed(3), view, always=True)
    t2 = s.sample(6, torch.Generator().manual_seed(3), view, always=True)
    assert torch.equal(s.apply(images, t1), s.apply(images, t2))  # replayable: same stream, same views
    moved = s.apply(images, t1)
    assert (moved - images).abs().amax(dim=(1, 2, 3)).gt(1e-3).all()  # always: every sample transformed
    a = s.encode(ident, t1) if view == "target" else s.encode(t1, ident)
    assert a.abs().sum(1).gt(0).all()
    assert len(s.describe(a[0])) > 0


@pytest.mark.parametrize("name", ALL)
def test_strength_zero_is_the_identity_for_every_family(name):
    s = _set(name, strength=0.0)
    src, tgt = s.sample_pair(16, torch.Generator().manual_seed(0))
    assert torch.equal(s.encode(src, tgt), torch.zeros(16, s.dim))


def test_the_sync_free_path_gives_the_cpu_path_for_the_geometric_families():
    from iwm.actions.family import where_each

    s = _set(*GEOMETRIC, crop_prob=0.5, rot90_prob=0.5, rotate_prob=0.5)
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = s.sample(12, torch.Generator().manual_seed(1), "target")
    fast = s.apply(images, t)
    import iwm.actions.geometric as geo

    orig = geo.where_each
    try:
        geo.where_each = lambda im, sel, fn, sync_free=None: where_each(im, sel, fn, sync_free=True)
        masked = s.apply(images, t)
    finally:
        geo.where_each = orig
    assert torch.allclose(fast, masked, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# geometric families: where a target patch's pixels come from, and the masks


def _patch_ids(grid: int, size: int) -> torch.Tensor:
    """An image whose every patch holds its own index, (1, 3, size, size), values id / N."""
    p = size // grid
    ids = torch.arange(grid * grid, dtype=torch.float32).view(grid, grid)
    img = ids.repeat_interleave(p, 0).repeat_interleave(p, 1) / (grid * grid)
    return img.expand(3, -1, -1).unsqueeze(0)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_overlap_names_the_source_patches_a_target_patch_shows(name):
    grid, size, b = 8, 32, 16
    s = _set(name)
    t = s.sample(b, torch.Generator().manual_seed(2), "target", always=True)
    y = s.apply(_patch_ids(grid, size).expand(b, -1, -1, -1).contiguous(), t)[:, 0] * grid * grid
    overlap = s.overlap(s.encode(s.identity(b), t), grid)
    exact = (y - y.round()).abs() < 1e-4  # pixels not blended across a patch border
    p = size // grid
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    target_patch = (rows // p) * grid + cols // p
    checked = 0
    for i in range(b):
        inside = exact[i] & (y[i] > 0.5)  # black corners (id 0 aside) come from no patch
        src = y[i][inside].round().long()
        assert overlap[i, target_patch[inside], src].all(), f"sample {i}"
        checked += int(inside.sum())
    assert checked > b * size * size // 4
    if name in ("hflip", "rot90"):  # a permutation of the patches
        assert torch.equal(overlap.sum(2), torch.ones(b, grid * grid, dtype=torch.long))


def test_the_context_never_shows_a_target_blocks_pixels_under_geometric_actions():
    cfg = config.load(config.resolve_config("cifar10_equi"), ["data.batch_size=32",
                                                              f"aug.families=[jitter,{','.join(GEOMETRIC)}]"])
    maker = BatchMaker(cfg, 0, 1, torch.device("cpu"))
    crops = torch.randint(0, 256, (32, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    from iwm.train.step import step_generator

    for step in range(3):
        _, _, action, masks = maker(crops, step)
        source, target = maker.actions.sample_pair(32, step_generator(cfg.run.seed, step))
        overlap = maker.actions.overlap(action, 8)
        assert torch.equal(action, maker.actions.encode(source, target))
        for i in range(32):
            covered = overlap[i, masks.targets[i].flatten()].any(0)
            ctx = masks.context[i] if masks.context_valid is None else masks.context[i][masks.context_valid[i]]
            assert not covered[ctx].any()
            assert len(ctx) >= cfg.mask.min_context


def test_photometric_runs_draw_the_masks_they_drew_before_overlap_existed():
    from iwm.masks import MultiBlockMasker

    masker = MultiBlockMasker(config.load().mask, 8)
    # an overlap where every target patch shows its own source patch is the shared frame
    same_frame = torch.eye(64, dtype=torch.bool).expand(64, -1, -1)
    a, b = masker(64, torch.Generator().manual_seed(0)), masker(64, torch.Generator().manual_seed(0), same_frame)
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert _set("jitter", "grayscale").overlap(torch.zeros(4, 5), 8) is None


@pytest.mark.parametrize("name", GEOMETRIC)
def test_a_target_patch_centre_is_traced_to_a_source_patch_its_pixels_come_from(name):
    grid, b = 8, 16
    s = _set(name)
    t = s.sample(b, torch.Generator().manual_seed(3), "target", always=True)
    a = s.encode(s.identity(b), t)
    where, overlap = s.source_positions(a, grid), s.overlap(a, grid)
    cell = where.round().long()
    inside = ((where > -0.5) & (where < grid - 0.5)).all(-1)
    n = torch.arange(grid * grid).expand(b, -1)
    src = (cell[..., 0] * grid + cell[..., 1]).clamp(0, grid * grid - 1)
    assert overlap[torch.arange(b)[:, None].expand_as(n)[inside], n[inside], src[inside]].all()
    # the identity leaves every centre on its own patch, exactly
    grid_rc = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).view(-1, 2)
    assert torch.equal(s.source_positions(torch.zeros(2, s.dim), grid), grid_rc.float().expand(2, -1, -1))


def test_sincos_at_integer_coordinates_is_timms_grid_embedding():
    from timm.layers import build_sincos2d_pos_embed

    from iwm.models.predictor import sincos_at

    rc = torch.stack(torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij"), -1).view(-1, 2).float()
    assert torch.equal(sincos_at(rc, 64), build_sincos2d_pos_embed([6, 6], 64))


def _predictor(frame: str, families: str):
    from conftest import TINY

    from iwm.models.predictor import build_predictor

    torch.manual_seed(0)
    cfg = config.from_dict(None, TINY + [f"aug.families={families}", f"predictor.query_frame={frame}"])
    return build_predictor(cfg).eval(), ActionSet.from_config(cfg.aug, cfg.data.image_size), cfg


def test_a_moved_query_sits_where_its_pixels_come_from_and_predicts_y_at_ys_positions():
    """query_frame=source: under hflip, target patch p is queried at its mirror in x, which is
    what a target-frame predictor does when asked for the mirrored patches; unflipped, the two
    frames agree."""
    src_pred, actions, cfg = _predictor("source", "[jitter,hflip]")
    tgt_pred, _, _ = _predictor("target", "[jitter,hflip]")
    tgt_pred.load_state_dict(src_pred.state_dict())
    grid = cfg.data.image_size // cfg.model.patch_size
    g = torch.Generator().manual_seed(0)
    b, d = 4, src_pred.embed.in_features
    context, ctx_idx = torch.randn(b, 5, d, generator=g), torch.arange(5).expand(b, -1)
    tidx = torch.tensor([[4, 5, 9, 14]]).expand(b, -1)
    flipped = torch.zeros(b, actions.dim)
    flipped[:, actions.slices["hflip"]] = 1.0
    mirror = (tidx // grid) * grid + (grid - 1 - tidx % grid)
    with torch.no_grad():
        assert torch.allclose(src_pred(context, ctx_idx, tidx, flipped), tgt_pred(context, ctx_idx, mirror, flipped),
                              atol=1e-5)
        assert not torch.allclose(src_pred(context, ctx_idx, tidx, flipped), tgt_pred(context, ctx_idx, tidx, flipped))
        still = torch.zeros(b, actions.dim)
        assert torch.allclose(src_pred(context, ctx_idx, tidx, still), tgt_pred(context, ctx_idx, tidx, still),
                              atol=1e-6)


def test_runs_stored_before_query_frame_keep_the_target_frame_and_new_runs_default_to_source():
    assert config.load().predictor.query_frame == "source"
    old = config.load().to_dict()
    del old["predictor"]["query_frame"]
    assert config.from_dict(old, stored=True).predictor.query_frame == "target"
    assert config.from_dict(old).predictor.query_frame == "source"  # a user's file: today's default
    new = config.load(None, ["predictor.query_frame=source"]).to_dict()
    assert config.from_dict(new, stored=True).predictor.query_frame == "source"


# ----------------------------------------------------------------------------------------------
# configuration


def test_a_bad_family_list_is_refused_in_one_line_naming_the_key(tiny_overrides):
    with pytest.raises(ConfigError, match=r"^aug\.families: 'posterise' is not a known action family"):
        iwm.train.build_model(config.from_dict(None, tiny_overrides + ["aug.families=[jitter,posterise]"]))
    with pytest.raises(ConfigError, match=r"^aug\.families: lists a family twice"):
        config.from_dict(None, ["aug.families=[jitter,jitter]"])
    with pytest.raises(ConfigError, match=r"^aug\.families: cannot import 'nowhere:Thing'"):
        build_family("nowhere:Thing", AugConfig(), 32)
    assert config.from_dict(None, ["aug.families=jitter,hflip"]).aug.families == ("jitter", "hflip")


def test_a_family_named_module_colon_class_is_imported_and_registered(tmp_path, monkeypatch):
    (tmp_path / "my_families.py").write_text(textwrap.dedent('''
        import torch
        from iwm.actions import ActionFamily

        class Invert(ActionFamily):
            name, values, views = "invert", ("inverted",), "source"

            def sample(self, batch, generator, view, always=False):
                on = torch.rand(batch, generator=generator) < (1.0 if always else 0.5)
                return {"on": on & (view == "source")}

            def identity(self, batch, device="cpu"):
                return {"on": torch.zeros(batch, dtype=torch.bool, device=device)}

            def apply(self, images, params):
                return torch.where(params["on"].view(-1, 1, 1, 1), 1 - images, images)

            def encode(self, source, target):
                return (source["on"].float() - target["on"].float()).unsqueeze(1)
    '''))
    monkeypatch.chdir(tmp_path)
    s = ActionSet.from_config(AugConfig(families=("jitter", "my_families:Invert")), 32)
    assert s.names == ("jitter", "invert") and s.dim == 5 and "invert" in known_families()


# ----------------------------------------------------------------------------------------------
# a user's family and the geometric ones, end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny runs: the paper's families plus a user's posterize; and jitter plus every
    geometric family."""
    register(Posterize)
    tmp = tmp_path_factory.mktemp("families")
    from conftest import TINY

    torch.set_num_threads(1)
    runs = {}
    for label, families in (("user", "[jitter,grayscale,blur,solarize,posterize]"),
                            ("geometric", f"[jitter,{','.join(GEOMETRIC)}]")):
        cfg = config.from_dict(None, TINY + [f"run.out_dir={tmp / label}", f"data.cache_dir={tmp / 'cache'}",
                                             "optim.max_steps=3", f"aug.families={families}", "eval.every=3"])
        Trainer(cfg).fit()
        runs[label] = Path(cfg.run.out_dir)
    return runs


def _health(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "health"][-1]


def test_a_user_family_trains_and_mrr_health_and_retrieval_report_it(trained, tmp_path):
    run = iwm.load(trained["user"])
    assert run.actions.names[-1] == "posterize" and run.predictor.action_dim == 8
    health = _health(trained["user"])
    assert {"loss_all", "loss_posterize", "loss_jitter"} <= set(health)
    res = compute_mrr(run, num_images=2, bank_size=6, source="augmented")
    assert list(res["families"]) == ["all", "jitter", "grayscale", "blur", "solarize", "posterize"]
    assert all(0 < v["mrr"] <= 1 for v in res["families"].values())
    from iwm.viz.retrieval import retrieval_figure

    out = retrieval_figure(run, tmp_path / "fig.png", num_images=1, num_neighbours=2, bank_size=6)
    from PIL import Image

    h = Image.open(out).size[1]
    assert h == round((6 * 1.25 + 0.3) * 100)  # a row per family: all + 5 + posterize


def test_geometric_families_train_and_each_is_scored_by_the_clean_protocol(trained):
    run = iwm.load(trained["geometric"])
    assert run.actions.names == ("jitter", *GEOMETRIC) and run.predictor.action_dim == 4 + 3 + 1 + 3 + 1
    res = compute_mrr(run, num_images=2, bank_size=16)
    assert list(res["families"]) == ["jitter", *GEOMETRIC]
    assert all(0 < v["mrr"] <= 1 for v in res["families"].values())
    # a family's own bank holds each transformation once: hflip's is the image and its mirror
    hflip = res["families"]["hflip"]
    assert hflip["count"] == 2 * 2 and hflip["chance"] == pytest.approx(0.75)
    assert 2 * 2 <= res["families"]["rot90"]["count"] <= 2 * 4
    assert res["families"]["jitter"]["count"] <= 32 and res["chance"] == pytest.approx(chance_mrr(16))
    health = _health(trained["geometric"])
    assert {f"loss_{f}" for f in GEOMETRIC} <= set(health)
    assert {f"mrr_{f}" for f in GEOMETRIC} <= set(health)
    with pytest.raises(ValueError, match="scores the families jitter, crop"):
        compute_mrr(run, num_images=1, bank_size=4, families=["grayscale"])


def test_a_strict_context_shows_no_pixel_of_any_bank_entrys_targets(trained):
    from iwm.eval.mrr import Probe, eval_images, image_generator

    run = iwm.load(trained["geometric"])
    probe = Probe(run, strict_context=True)
    img = eval_images(run, 1, 0)[0]
    grid = run.config.data.image_size // run.config.model.patch_size
    for family in ("hflip", "rot90", "crop"):
        trial = probe.trial(img, 8, image_generator(0, 0, family), family=family)
        a = probe.clean_action(trial.bank_params)
        shown = trial.masks.context[0] if trial.masks.context_valid is None else \
            trial.masks.context[0][trial.masks.context_valid[0]]
        covered = probe.actions.overlap(a, grid)[:, trial.masks.targets[0].flatten()].any(1)  # (K, N)
        assert not covered[:, shown].any(), family
    res = compute_mrr(run, num_images=2, bank_size=8, strict_context=True, families=["hflip"])
    assert res["settings"]["context"] == "strict" and 0 < res["families"]["hflip"]["mrr"] <= 1
    assert res["mrr"] is None and "not scored" in res["note"]  # every family together: no context left
    with pytest.raises(ValueError, match="^strict context: this bank's entries together take pixels"):
        probe.trial(img, 32, image_generator(0, 0))  # that bank, asked for anyway
    # with no family that moves pixels, strict is the shared context: the same figures
    user = iwm.load(trained["user"])
    args = dict(num_images=2, bank_size=6, source="augmented")
    assert compute_mrr(user, strict_context=True, **args)["families"] == compute_mrr(user, **args)["families"]


def test_one_family_edit_turns_it_on_keeps_the_shared_jitter_and_turns_the_rest_off():
    s = _set("jitter", "grayscale", "blur", "hflip")
    src, tgt = s.sample_pair(32, torch.Generator().manual_seed(0))
    e_src, e_tgt = s.for_family(src, tgt, "grayscale")
    assert e_src["grayscale"]["on"].all() and not e_src["blur"]["on"].any() and not e_tgt["hflip"]["on"].any()
    assert torch.equal(e_src["jitter"]["brightness"], src["jitter"]["brightness"])
    assert torch.equal(e_tgt["jitter"]["hue"], tgt["jitter"]["hue"])
    f_src, f_tgt = s.for_family(src, tgt, "hflip")
    assert f_tgt["hflip"]["on"].all() and not f_src["grayscale"]["on"].any()
    assert s.for_family(src, tgt, "all") == (src, tgt)


@pytest.mark.parametrize("command", [["eval", "mrr", "pretrained:cifar10_equi", "--family", "rot90"],
                                     ["viz", "retrieval", "pretrained:cifar10_equi", "--family", "rot90"]])
def test_a_family_the_run_does_not_learn_is_refused_in_one_line(command, tmp_path, capsys):
    from iwm.cli import main

    assert main([*command, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iwm: error:") and "rot90" in err and len(err.splitlines()) == 1
