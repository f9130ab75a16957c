"""iwm study action-families: every run trained and measured, the page written, and a second call
reuses what was measured."""

import json

import pytest

import iwm

from conftest import TINY
from iwm.actions import GEOMETRIC
from iwm.studies import action_families, leverage
from iwm.studies.action_families import MODELS, RANDOM, STRONGER, run_study

EXTRA = TINY + ["data.dataset=synthetic", "eval.knn_train=32", "eval.knn_test=16"]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_study_measures_every_family_and_protocol_writes_the_page_and_resumes(tmp_path, monkeypatch):
    settings = {**leverage.default_settings(), "train_size": 32, "test_size": 16, "attentive_epochs": 1,
                "finetune_epochs": 1, "finetune_batch": 8}
    out, runs = tmp_path / "docs" / "action_families.md", tmp_path / "runs"
    extra = [*EXTRA, f"data.cache_dir={tmp_path / 'cache'}"]
    study = run_study(out, runs, steps=2, mrr_images=2, mrr_bank=4, extra_overrides=extra, device="cpu",
                      settings=settings, progress=False, long_steps=4)
    # the longer runs geometric first, then the stronger predictors: a study stopped before the end
    # loses the photometric one
    long = [f"{label}, 4 steps" for label in MODELS]
    assert study["order"] == [*MODELS, *long[1:], *STRONGER, long[0]]
    for label, frame in zip(STRONGER, ("source", "target")):
        cfg = iwm.load(runs / STRONGER[label].name).config
        assert (cfg.predictor.conditioning, cfg.predictor.depth, cfg.predictor.query_frame) == ("sequence", 8, frame)
        assert set(study["models"][label]["evals"]) == {"mrr"}  # the world model's question only
    assert iwm.load(runs / "strong_d4_x2").step == 4
    assert iwm.load(runs / "strong_d4_geometric_source_x2").step == 4
    assert iwm.load(runs / "strong_d4_geometric_x2").config.predictor.query_frame == "target"
    assert iwm.load(runs / "strong_d4_geometric_source").config.predictor.query_frame == "source"
    for label in ("photometric + geometric", "photometric + geometric, queries in y's frame"):
        geo = study["models"][label]
        assert geo["families"] == ["jitter", "grayscale", "blur", "solarize", *GEOMETRIC]
        assert list(geo["evals"]["mrr"]["clean"]["families"]) == ["jitter", *GEOMETRIC]
    assert list(study["models"]["photometric"]["evals"]["mrr"]["clean"]["families"]) == ["jitter"]
    for label in MODELS:
        assert {"mrr", "knn", "linear", "attentive", "predictor_ft"} <= set(study["models"][label]["evals"])
    assert set(study["models"][RANDOM]["evals"]) == {"knn", "linear", "attentive"}
    md = out.read_text()
    floors = md.split("## The geometric world model against its floor")[1].split("\n\n")[2].splitlines()
    assert floors[0].split("|")[1:-1] == [" model ", " bank ", " learned MRR ", " floor ", " learned - floor ",
                                          " chance ", " reading "]
    # every geometric family of the two geometric runs at both lengths and of the two stronger
    # predictors, and the floor alone of the photometric runs and the shipped model
    assert len(floors) == 2 + 6 * 4 + 2 * 4 + 4
    shipped = [row for row in floors if row.startswith(f"| {action_families.SHIPPED} |")]
    assert len(shipped) == 4 and all(row.endswith("| floor only |") for row in shipped)
    learnt = [row for row in floors if row.startswith("| photometric + geometric |")]
    assert all(row.split("|")[7].strip() in ("**beyond its floor**", "below its floor", "not resolved")
               for row in learnt)
    geo_floor = study["models"]["photometric"]["evals"]["mrr"]["geometric_floor"]
    assert set(geo_floor) == set(GEOMETRIC) and all(v["mrr"] is None and v["floor"] > 0 for v in geo_floor.values())
    assert "predictor FT - linear probe" in md and "random init" in md
    assert not any(line.startswith(f"| {label} | not measured") for label in STRONGER for line in md.splitlines())
    assert "| photometric + geometric, 4 steps |" in md and "| photometric + geometric, queries in y's frame |" in md
    assert json.loads(out.with_suffix(".json").read_text())["models"].keys() == study["models"].keys()

    def no_work(*a, **k):
        raise AssertionError("a stored measurement was measured again")

    monkeypatch.setattr(action_families, "evaluate", no_work)
    monkeypatch.setattr(action_families, "_mrr", no_work)
    again = run_study(out, runs, steps=2, mrr_images=2, mrr_bank=4, extra_overrides=extra, device="cpu",
                      settings=settings, progress=False, long_steps=4)
    assert again["models"]["photometric"]["evals"] == study["models"]["photometric"]["evals"]


def test_raw_pixel_rows_are_reused_from_a_leverage_study_only_with_the_same_settings(tmp_path, monkeypatch):
    settings = {**leverage.default_settings(), "train_size": 32, "test_size": 16, "attentive_epochs": 1,
                "finetune_epochs": 1, "finetune_batch": 8}
    extra = [*EXTRA, f"data.cache_dir={tmp_path / 'cache'}"]
    stored = {"models": {"raw pixels": {"evals": {
        "knn": {"key": leverage.setting_key("knn", settings, 0), "top1": 0.123},
        "linear": {"key": leverage.setting_key("linear", {**settings, "train_size": 99}, 0), "top1": 0.456}}}}}
    (tmp_path / "leverage.json").write_text(json.dumps(stored))
    measured = []

    def fake(run, kind, s, device, progress, pixels=False):
        measured.append((kind, pixels))
        return {"top1": 0.5}

    monkeypatch.setattr(action_families, "evaluate", fake)
    scores = dict.fromkeys(action_families.SCORES, 0.1)
    monkeypatch.setattr(action_families, "_mrr", lambda *a: {"clean": {**scores, "families": {}},
                        "augmented": {**scores, "families": {}}, "chance": 0.1})
    monkeypatch.setattr(action_families, "_geometric_floor", lambda *a: {})
    study = run_study(tmp_path / "p.md", tmp_path / "runs", steps=1, mrr_images=1, mrr_bank=2, extra_overrides=extra,
                      device="cpu", settings=settings, progress=False, pixels_from=tmp_path / "leverage.json")
    pixels = study["models"]["raw pixels"]["evals"]
    assert pixels["knn"]["top1"] == 0.123 and pixels["linear"]["top1"] == 0.5  # other settings: measured again
    assert ("knn", True) not in measured and ("linear", True) in measured
    assert "leverage.json`, measured with the same settings" in (tmp_path / "p.md").read_text()


def test_a_study_stopped_midway_leaves_a_page_of_what_it_measured(tmp_path, monkeypatch):
    settings = {**leverage.default_settings(), "train_size": 32, "test_size": 16, "attentive_epochs": 1,
                "finetune_epochs": 1, "finetune_batch": 8}
    extra = [*EXTRA, f"data.cache_dir={tmp_path / 'cache'}"]
    monkeypatch.setattr(action_families, "evaluate", lambda *a, **k: {"top1": 0.5})
    trained = []
    real = action_families.ensure_trained

    def stop_at_the_second(cfg, n):
        if trained:
            raise KeyboardInterrupt
        trained.append(cfg.run.out_dir)
        real(cfg, n)

    monkeypatch.setattr(action_families, "ensure_trained", stop_at_the_second)
    out = tmp_path / "page.md"
    with pytest.raises(KeyboardInterrupt):
        run_study(out, tmp_path / "runs", steps=1, mrr_images=2, mrr_bank=4, extra_overrides=extra, device="cpu",
                  settings=settings, progress=False)
    page = out.read_text()
    assert "| photometric |" in page and "| photometric + geometric |" not in page
    assert f"| {action_families.SHIPPED} |" in page  # the shipped model's floor, measured on the first run's images
