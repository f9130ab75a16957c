"""``iwm study recipe``: variants chosen on a validation split carved from train, the test split
scored once for the chosen one; tiny synthetic runs, or faked measurements where only the
choice is under test."""

import sys
from pathlib import Path

import pytest

from conftest import TINY
from iwm.config import from_dict
from iwm.data import datasets
from iwm.eval.validation import validation_sets
from iwm.studies import grid, recipe

pytestmark = pytest.mark.usefixtures("one_thread")

EXTRA = TINY + ["data.dataset=synthetic", "eval.knn_train=32", "eval.knn_test=16"]


def test_validation_queries_are_train_images_held_out_from_the_bank():
    cfg = from_dict(None, EXTRA)
    bank, queries = validation_sets(cfg, 16)
    assert (len(bank), len(queries)) == (32, 16)
    assert not set(bank.indices) & set(queries.indices)
    again_bank, again_queries = validation_sets(cfg, 16)  # seeded: the same split every time
    assert (again_bank.indices, again_queries.indices) == (bank.indices, queries.indices)
    train = datasets.build_dataset(cfg.data, cfg.run.seed, "train", augment=False)
    i = queries.indices[0]
    assert queries[0][0].equal(train[i][0]) and queries[0][1] == train[i][1]  # train images, centred
    all_bank, _ = validation_sets(from_dict(None, EXTRA + ["eval.knn_train=0"]), 16)
    assert sorted(all_bank.indices + queries.indices) == list(range(64))  # 0: every other train image
    for n in (0, 64):
        with pytest.raises(ValueError, match="validation queries"):
            validation_sets(cfg, n)


def test_the_variant_is_chosen_on_validation_and_only_it_is_scored_on_test(tmp_path, monkeypatch):
    # validation and test disagree: base wins on test, cut_context on validation
    val = {"recipe_base": 0.30, "recipe_cut_context": 0.40}
    test = {"recipe_base": 0.90, "recipe_cut_context": 0.20}
    tested = []

    def fake_measure(cfg, val_images, mrr_images, mrr_bank, device):
        return {"val_knn_top1": val[Path(cfg.run.out_dir).name], "val_bank": 32, "val_queries": val_images,
                "mrr": 0.05, "chance": 0.02, "images_per_s": None, "final_loss": 0.3}

    def fake_measure_test(cfg, device):
        tested.append(Path(cfg.run.out_dir).name)
        return {"knn_top1": test[Path(cfg.run.out_dir).name], "bank": 32, "test": 16}

    monkeypatch.setattr(recipe, "ensure_trained", lambda cfg, steps: False)
    monkeypatch.setattr(recipe, "measure", fake_measure)
    monkeypatch.setattr(recipe, "measure_test", fake_measure_test)
    page = tmp_path / "recipe.md"
    res = recipe.run_study(page, tmp_path / "runs", 2, 2, 8, EXTRA, "cpu", ["base", "cut_context"], "cmd",
                           val_images=16)
    assert res["chosen"]["variant"] == "cut_context" and tested == ["recipe_cut_context"]
    assert (res["chosen"]["val_knn_top1"], res["chosen"]["test_knn_top1"]) == (0.40, 0.20)
    text = page.read_text()
    assert "Chosen on validation: cut_context (kNN top-1 40.00 %); its test score: 20.00 %" in text
    assert "| base |" in text and "| 30.00 % |" in text and "90.00" not in text  # base's test never read

    tested.clear()  # a worker's share (no page): measured on validation, the test split left alone
    res = recipe.run_study(None, tmp_path / "runs", 2, 2, 8, EXTRA, "cpu", ["base"], "cmd", val_images=16,
                           score_test=False)
    assert tested == [] and res["chosen"]["test_knn_top1"] is None
    assert recipe.chosen_line(res).endswith("its test score: not scored in this call")
    assert recipe.choose({"a": {"val_knn_top1": 0.5}, "b": {"val_knn_top1": 0.5}}) == "a"  # a tie: first listed


def test_recipe_study_reads_the_test_split_only_to_score_the_chosen_variant(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    for run in recipe.variant_runs(["base", "cut_context"]):  # trained first: training's health reads test images
        grid.ensure_trained(grid.run_config(run, runs, 2, EXTRA, "cpu"), 2)
    splits, in_test_scoring, scored = [], [False], []
    real_build, real_measure_test = datasets.build_dataset, getattr(recipe, "measure_test", None)

    def spy_build(cfg, seed, split="train", augment=None):
        splits.append((split, in_test_scoring[0]))
        return real_build(cfg, seed, split, augment)

    def spy_measure_test(cfg, device):
        scored.append(Path(cfg.run.out_dir).name.removeprefix("recipe_"))
        in_test_scoring[0] = True
        try:
            return real_measure_test(cfg, device)
        finally:
            in_test_scoring[0] = False

    for module in [m for name, m in sys.modules.items() if name.startswith("iwm")]:
        if getattr(module, "build_dataset", None) is real_build:
            monkeypatch.setattr(module, "build_dataset", spy_build)
    monkeypatch.setattr(recipe, "measure_test", spy_measure_test, raising=False)
    out = tmp_path / "recipe.md"
    res = recipe.run_study(out, runs, 2, 2, 8, EXTRA, "cpu", ["base", "cut_context"], "cmd", val_images=16)
    assert [s for s in splits if s[0] != "train"] == [("test", True)]  # test: once, inside the chosen's scoring
    assert ("train", False) in splits  # the validation split is carved from train
    vals = {n: r["val_knn_top1"] for n, r in res["runs"].items()}
    assert res["chosen"]["variant"] == max(vals, key=vals.get) and scored == [res["chosen"]["variant"]]
    page = out.read_text()
    assert "| base |" in page and "| cut_context |" in page and "Chosen on validation: " in page
    assert out.with_suffix(".json").is_file()

    again = recipe.run_study(None, runs, 2, 2, 8, EXTRA, "cpu", ["base"], "cmd", val_images=16)  # cached
    assert again["runs"]["base"]["measured"] == res["runs"]["base"]["measured"]
    # the reading written by hand around the table survives a rerun; only the table is replaced
    out.write_text(f"# by hand\n\n{page}\n## Reading\nkept\n")
    recipe.run_study(out, runs, 2, 2, 8, EXTRA, "cpu", ["base"], "cmd", val_images=16)
    rewritten = out.read_text()
    assert rewritten.startswith("# by hand\n") and rewritten.endswith("## Reading\nkept\n")
    assert "| base |" in rewritten and "| cut_context |" not in rewritten and rewritten.count("| variant |") == 1
    appended = f"hand-written, no markers\n\n{recipe.TABLE_BEGIN}\nT\n{recipe.TABLE_END}\n"
    assert recipe.place_table("hand-written, no markers\n", "T\n") == appended  # kept, the table after it
    with pytest.raises(ValueError, match="unknown variant"):
        recipe.variant_runs(["nope"])
