"""iwm study efficiency: every recipe trained and scored on validation at its checkpoints, the
finalists on a second seed, the page with its plot, and a second call that reuses it all."""

import pytest

from conftest import TINY
from iwm.studies import efficiency
from iwm.studies.efficiency import RECIPES, minutes_to_pass, run_study

pytestmark = pytest.mark.usefixtures("one_thread")


def test_study_scores_checkpoints_on_validation_writes_the_page_and_resumes(tmp_path, monkeypatch):
    recipes = {k: RECIPES[k] for k in ("shipped recipe", "SIGReg, no teacher")}
    extra = [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "eval.knn_train=32", "run.log_every=1"]
    out, runs = tmp_path / "docs" / "efficiency.md", tmp_path / "runs"
    study = run_study(out, runs, steps=4, every=2, queries=16, extra_overrides=extra, device="cpu", seeds=2,
                      finalists=1, mrr_images=2, mrr_bank=4, recipes=recipes)
    assert set(study["runs"]) == {"shipped_seed0", "sigreg_online_seed0", f"{recipes[study['finalists'][0]].name}_seed1"}
    for r in study["runs"].values():
        assert [p["step"] for p in r["curve"]] == [2, 4]
        assert 0 < r["curve"][0]["minutes"] < r["curve"][1]["minutes"]
        assert 0 <= r["curve"][-1]["knn"] <= 1 and r["mrr"] > 0 and r["mrr_chance"] == pytest.approx(0.5208, abs=1e-4)
        assert 0 <= r["random_init"] <= 1  # the floor each recipe starts from, on the same images
    assert 0 < study["pixels"] <= 1
    md = out.read_text()
    assert "| shipped recipe | 1 |" in md and "| SIGReg, no teacher |" in md and "validation split" in md
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".json").is_file()

    def no_work(*a, **k):
        raise AssertionError("a stored measurement was measured again")

    monkeypatch.setattr(efficiency, "curve", no_work)
    monkeypatch.setattr(efficiency, "compute_mrr", no_work)
    again = run_study(out, runs, steps=4, every=2, queries=16, extra_overrides=extra, device="cpu", seeds=2,
                      finalists=1, mrr_images=2, mrr_bank=4, recipes=recipes)
    assert again["runs"] == study["runs"]


def test_minutes_to_pass_the_pixels_interpolates_between_points():
    points = [{"minutes": 2.0, "knn": 0.30}, {"minutes": 4.0, "knn": 0.50}, {"minutes": 6.0, "knn": 0.60}]
    assert minutes_to_pass(points, 0.40) == pytest.approx(3.0)
    assert minutes_to_pass(points, 0.20) == 2.0  # above at the first point: its minutes
    assert minutes_to_pass(points, 0.70) is None  # never
