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
        assert r["mrr"] == pytest.approx(want["mrr"], abs=1e-9)
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


def _context(masks, i: int) -> torch.Tensor:
    """Sample i's real context patches."""
    return masks.context[i] if masks.context_valid is None else masks.context[i][masks.context_valid[i]]


def _targets(masks, i: int) -> torch.Tensor:
    """Sample i's real target patches in y, every block together."""
    t = masks.targets[i].flatten()
    return t if masks.target_valid is None else t[masks.target_valid[i].flatten()]


LEAK_CASES = [(f, size, patch) for f in (*GEOMETRIC, "all") for size, patch in ((32, 4), (64, 8), (64, 16))]


@pytest.mark.parametrize("family,size,patch", LEAK_CASES)
def test_no_context_patch_gives_any_pixel_weight_to_any_target_patch(family, size, patch):
    """Real data through the real path: the training batch maker, fed crops that are black but
    for one x patch, makes y; wherever that patch is in a sample's context, y must be black on
    every pixel of every target patch (bilinear neighbours and borders included), for each
    family, all of them composed, and patch sizes 4, 8 and 16."""
    from iwm.data.views import MEAN, STD

    families = ",".join(GEOMETRIC) if family == "all" else family
    b, grid = 8, size // patch
    cfg = config.load(config.resolve_config("cifar10_equi"), [
        f"data.batch_size={b}", f"data.image_size={size}", f"model.patch_size={patch}", f"aug.families=[{families}]",
        "aug.crop_prob=0.8", "aug.rotate_prob=0.8", "mask.min_context=1"])
    maker = BatchMaker(cfg, 0, 1, torch.device("cpu"))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    checked = 0
    for step in range(2):
        for m in range(grid * grid):
            crops = torch.zeros(b, 3, size, size, dtype=torch.uint8)
            crops[:, :, (m // grid) * patch:(m // grid + 1) * patch, (m % grid) * patch:(m % grid + 1) * patch] = 255
            _, y, _, masks = maker(crops, step)
            lit = (y * std + mean).abs().amax(1).gt(1e-5)  # (B, S, S): pixels that took weight from patch m
            lit = lit.view(b, grid, patch, grid, patch).any(4).any(2).flatten(1)  # per y patch
            for i in range(b):
                if bool((_context(masks, i) == m).any()):
                    assert not lit[i, _targets(masks, i)].any(), f"sample {i}, step {step}: x patch {m} leaks"
                    checked += 1
    assert checked > b * grid  # the check ran on many contexts
    valid = masks.target_valid
    assert valid is not None and valid.sum() > 0  # targets are left to predict


def test_the_context_does_not_depend_on_the_action():
    """Two different moves drawn with the same generator state get the same context (the hole
    in x is I-JEPA's), and the targets differ: which patches the context lacks tells no move."""
    from iwm.masks import MultiBlockMasker

    s = _set(*GEOMETRIC)
    masker = MultiBlockMasker(config.load().mask, 8)
    one = s.sample(32, torch.Generator().manual_seed(1), "target", always=True)
    two = s.sample(32, torch.Generator().manual_seed(2), "target", always=True)
    a = masker(32, torch.Generator().manual_seed(0), s.support(one, 8, 32))
    b = masker(32, torch.Generator().manual_seed(0), s.support(two, 8, 32))
    plain = masker(32, torch.Generator().manual_seed(0))
    assert torch.equal(a.context, b.context) and torch.equal(a.context, plain.context)
    assert not torch.equal(a.targets, b.targets)


def test_photometric_runs_draw_the_masks_they_drew_before():
    from iwm.masks import MultiBlockMasker

    masker = MultiBlockMasker(config.load().mask, 8)
    # a support where every y patch shows its own x patch is the shared frame
    same_frame = torch.eye(64, dtype=torch.bool).expand(64, -1, -1)
    a, b = masker(64, torch.Generator().manual_seed(0)), masker(64, torch.Generator().manual_seed(0), same_frame)
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets) and b.target_valid.all()
    assert _set("jitter", "grayscale").support(_set("jitter", "grayscale").identity(4), 8, 32) is None


@pytest.mark.parametrize("name", GEOMETRIC)
def test_a_target_patch_centre_is_traced_to_a_source_patch_its_pixels_come_from(name):
    grid, b = 8, 16
    s = _set(name)
    t = s.sample(b, torch.Generator().manual_seed(3), "target", always=True)
    a = s.encode(s.identity(b), t)
    where, support = s.source_positions(a, grid), s.support(t, grid, 32)
    cell = where.round().long()
    inside = ((where > -0.5) & (where < grid - 0.5)).all(-1)
    n = torch.arange(grid * grid).expand(b, -1)
    src = (cell[..., 0] * grid + cell[..., 1]).clamp(0, grid * grid - 1)
    assert support[torch.arange(b)[:, None].expand_as(n)[inside], n[inside], src[inside]].all()
    if name in ("hflip", "rot90"):  # a permutation of the patches
        assert torch.equal(support.sum(2), torch.ones(b, grid * grid, dtype=torch.long))
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
    # a family's own bank holds each transformation once, drawn on and off as in training:
    # hflip's is the image and its mirror
    hflip = res["families"]["hflip"]
    assert hflip["count"] <= 2 * 2 and hflip["chance"] == pytest.approx(0.75)
    assert res["families"]["rot90"]["count"] <= 2 * 4
    assert res["families"]["jitter"]["count"] <= 32 and res["chance"] == pytest.approx(chance_mrr(16))
    health = _health(trained["geometric"])
    assert {f"loss_{f}" for f in GEOMETRIC} <= set(health)
    assert {f"mrr_{f}" for f in GEOMETRIC} <= set(health)
    with pytest.raises(ValueError, match="scores the families jitter, crop"):
        compute_mrr(run, num_images=1, bank_size=4, families=["grayscale"])


def test_mrr_keeps_every_bank_entrys_targets_off_the_context_and_stands_beside_its_floor(trained, monkeypatch):
    from iwm.eval.mrr import Probe, eval_images, format_table, image_generator

    run = iwm.load(trained["geometric"])
    probe = Probe(run)
    img = eval_images(run, 1, 0)[0]
    grid, size = run.config.data.image_size // run.config.model.patch_size, run.config.data.image_size
    for family in (None, "hflip", "rot90", "crop", "rotate"):
        trial = probe.trial(img, 8, image_generator(0, 0, family), family=family)
        support = probe.actions.support(trial.bank_params, grid, size)
        shown = _context(trial.masks, 0)
        idx, valid = trial.targets
        for k in range(len(idx)):
            assert not support[k, idx[k][valid[k]]][:, shown].any(), family
    # the floor: a_x->y zeroed, each query where the bank's geometry brings its pixels from
    seen = []
    forward = run.predictor.forward
    monkeypatch.setattr(run.predictor, "forward", lambda *a, **k: seen.append((a[3], k.get("query_coords")))
                        or forward(*a, **k))
    res = compute_mrr(run, num_images=2, bank_size=16)
    assert any(c is not None and not a.any() for a, c in seen) and any(c is None and a.any() for a, c in seen)
    for f in GEOMETRIC:
        r = res["families"][f]
        assert 0 < r["floor"] <= 1 and r["gain"] == pytest.approx(r["mrr"] - r["floor"]) and r["gain_se"] >= 0
    # the jitter bank keeps pixels still: one zeroed prediction for every entry, chance exactly
    assert res["families"]["jitter"]["floor"] == pytest.approx(res["families"]["jitter"]["chance"])
    table = format_table(res)
    assert "floor (no learning)" in table and f"| {res['floor']:.4f}" in table.replace("| ", "| ")
    shared = compute_mrr(run, num_images=1, bank_size=8, families=["hflip"], context="shared")
    assert "leaks" in shared["settings"]["context"] and "leaks" in format_table(shared)


def test_another_runs_model_gets_the_floor_alone():
    """The shipped photometric model never saw a move: with a geometric bank it is scored by the
    floor alone (no learned figure: its predictor reads no geometric action)."""
    run = iwm.pretrained("cifar10_equi")
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    res = compute_mrr(run, images=images, bank_size=8, aug=AugConfig(families=("jitter", "hflip")))
    assert res["mrr"] is None and 0 < res["floor"] <= 1 and "only the floor" in res["note"]


def test_a_rot90_only_bank_holds_each_turn_once_and_an_oracle_scores_one(tmp_path, monkeypatch):
    from conftest import TINY

    from iwm.eval import mrr

    cfg = config.from_dict(None, TINY + [f"run.out_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'c'}",
                                         "optim.max_steps=1", "aug.families=[rot90]", "eval.every=0"])
    Trainer(cfg).fit()
    run = iwm.load(cfg.run.out_dir)

    def oracle(self, trial, s, actions, place=None):  # each entry's own tokens at its own targets
        idx, _ = trial.targets
        return torch.stack([trial.bank_tokens[k, idx[k]] for k in range(len(idx))])

    monkeypatch.setattr(mrr.Probe, "predict", oracle)
    res = compute_mrr(run, num_images=3, bank_size=64)
    assert res["mrr"] == 1.0 and res["floor"] == 1.0
    assert res["count"] == 3 * 4 and res["chance"] == pytest.approx(chance_mrr(4))  # none and three turns


@pytest.mark.parametrize("frame", ["source", "target"])
def test_an_unconditioned_predictor_sees_nothing_of_the_action(frame):
    pred, actions, cfg = _predictor(frame, "[jitter,hflip,rot90]")
    pred.conditioning = "none"
    g = torch.Generator().manual_seed(0)
    b, d = 4, pred.embed.in_features
    context, ctx_idx = torch.randn(b, 5, d, generator=g), torch.arange(5).expand(b, -1)
    tidx = torch.tensor([[4, 5, 9, 14]]).expand(b, -1)
    one, two = torch.zeros(b, actions.dim), torch.zeros(b, actions.dim)
    one[:, actions.slices["hflip"]] = 1.0
    two[:, actions.slices["rot90"].start] = 1.0
    with torch.no_grad():
        assert torch.equal(pred(context, ctx_idx, tidx, one), pred(context, ctx_idx, tidx, two))


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
