import json
import re

import pytest

from conftest import TINY
from iwm.studies import grid, world_model as study
from iwm.studies.world_model import GRID, VERDICT, run_study

pytestmark = pytest.mark.usefixtures("one_thread")

EXTRA = TINY + ["data.dataset=synthetic", "eval.knn_train=32", "eval.knn_test=16"]


def test_grid_is_distinct_and_covers_both_tables():
    keys = [(r.config, tuple(sorted(r.overrides))) for r in GRID]
    assert len(set(keys)) == len(keys) == len({r.name for r in GRID})
    assert [c for c, _ in study.table1_rows()] == ["none", "sequence", "feature"]
    assert set(study.table2_cells()) == {(s, d) for s in study.STRENGTHS for d in study.DEPTHS}
    feature = dict(study.table1_rows())["feature"]
    assert study.table2_cells()[("strong", 4)] is feature  # trained once for both tables


def _row(md: str, first_cell: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r}")


def test_reused_run_check_ignores_where_cifar10_is_kept():
    from iwm.config import Config

    base = Config().to_dict()
    moved = json.loads(json.dumps(base))
    moved["data"].update(path="/elsewhere/cifar-10-python.tar.gz", cache_dir="/tmp/c")
    assert grid.training_part(moved) == grid.training_part(base)
    for d, path in ((base, "/photos"), (moved, "/other-photos")):  # a folder's path says which images: it counts
        d["data"].update(dataset="folder", path=path)
    assert grid.training_part(moved) != grid.training_part(base)


def test_a_run_trained_with_another_seed_is_not_reused(tmp_path):
    from iwm.config import ConfigError, from_dict
    from iwm.train import pretrain

    overrides = TINY + [f"run.out_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'c'}", "optim.max_steps=1",
                        "eval.every=0"]
    pretrain(from_dict(None, overrides))
    assert grid.trained_steps(from_dict(None, overrides)) == 1
    assert grid.trained_steps(from_dict(None, overrides + ["mask.length_groups=2"])) == 1  # speed only
    for other in ("run.seed=1", "optim.lr=0.01"):
        with pytest.raises(ConfigError, match="other settings"):
            grid.trained_steps(from_dict(None, overrides + [other]))


def test_study_writes_tables_and_reuses_runs(tmp_path, monkeypatch):
    out, runs = tmp_path / "docs" / "world_model.md", tmp_path / "runs"
    extra = EXTRA + [f"data.cache_dir={tmp_path / 'cache'}"]
    extra += ["data.subset=16"]  # 2 steps per epoch
    res = run_study(out, runs, steps=None, epochs=1, mrr_images=1, mrr_bank=4, extra_overrides=extra, device="cpu")

    saved = json.loads((runs / "study.json").read_text())
    assert json.loads(out.with_suffix(".json").read_text()) == saved  # the raw numbers beside the page
    assert saved == json.loads(json.dumps(res))
    assert set(saved["runs"]) == {r.name for r in GRID}
    assert all(r["step"] == 2 and r["trained_now"] for r in saved["runs"].values())
    assert (out.parent / "world_model_mrr.png").stat().st_size > 0
    assert saved["settings"]["steps"] == 2 and saved["settings"]["epochs"] == 1

    md = out.read_text()
    assert "Table 1" in md and "Table 2" in md and md.count(VERDICT) == 2
    assert "CPU, 1 threads" in md and "2 steps (1 epoch), batch 8" in md
    pixels = f"{100 * saved['knn_pixels_top1']:.2f} %"
    assert _row(md, "raw pixels")[5] == pixels
    assert f"raw pixels by the same protocol: {pixels}" in md and f"same kNN protocol: {pixels}" in md

    def num(v: float) -> str:
        return f"{v:.4f}"

    for cond, run in study.table1_rows():
        r = saved["runs"][run.name]
        assert _row(md, cond)[1:6] == [run.name, num(r["mrr"]), num(r["chance"]), num(r["mrr_augmented"]),
                                       f"{100 * r['knn_top1']:.2f} %"]
        assert r["mrr_augmented"] == r["families"]["all"]["mrr"]  # the clean source beside the augmented one
    for label, value in study.STRENGTHS.items():
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
                if line.startswith(f"| {label} ({value}) |")]
        own, common = rows[0], rows[1]  # the MRR tables: own transformations, then the strong bank
        runs_ = [saved["runs"][f"{label}_d{d}"] for d in study.DEPTHS]  # clean (augmented) per cell
        assert own[1:] == [f"{num(r['mrr'])} ({num(r['mrr_augmented'])})" for r in runs_]
        assert common[1:] == [f"{num(r['mrr_strong_bank'])} ({num(r['mrr_augmented_strong_bank'])})" for r in runs_]
    for d in study.DEPTHS:  # strong runs: their own bank is the strong bank
        r = saved["runs"][f"strong_d{d}"]
        assert r["mrr_strong_bank"] == r["mrr"] and r["mrr_augmented_strong_bank"] == r["mrr_augmented"]
    ij = saved["runs"]["ijepa"]
    assert ij["mrr"] is not None and ij["mrr_settings"]["aug"]["strength"] == 1.0
    assert _row(md, "ijepa")[1] == num(ij["mrr"]) and _row(md, "ijepa")[3] == num(ij["mrr_augmented"])
    for name, r in saved["runs"].items():  # per-family table: the last row starting with the run name
        assert list(r["families"]) == list(study.FAMILIES)  # the augmented source's, scored one at a time
        fam = [line for line in md.splitlines() if line.startswith(f"| {name} |")][-1]
        assert re.findall(r"\d\.\d{4}", fam) == [num(r["families"][f]["mrr"]) for f in study.FAMILIES]

    def no_training(cfg):
        raise AssertionError("a trained run was trained again")

    monkeypatch.setattr(grid, "pretrain", no_training)
    gpu = tmp_path / "gpu" / "world_model_gpu.md"  # one epoch was two steps: the same runs, as a section
    again = run_study(gpu, runs, steps=2, mrr_images=1, mrr_bank=4, extra_overrides=extra, device="cpu",
                      section="GPU run")
    assert not any(r["trained_now"] for r in again["runs"].values())
    assert {n: r["mrr"] for n, r in again["runs"].items()} == {n: r["mrr"] for n, r in saved["runs"].items()}
    page = gpu.read_text()
    headings = [line for line in page.splitlines() if line.startswith("#")]
    assert headings[0] == "## GPU run" and "### Table 1: conditioning of the predictor" in headings
    assert all(h.startswith("###") for h in headings[1:])
    assert "](world_model_gpu_mrr.png)" in page and (gpu.parent / "world_model_gpu_mrr.png").is_file()


def test_only_remeasures_the_named_runs(tmp_path):
    out = study.run_only(["weak_d1"], tmp_path / "runs", 2, 2, 8, EXTRA, "cpu", "cmd")
    assert list(out["runs"]) == ["weak_d1"]
    assert json.loads((tmp_path / "runs" / "study_only-weak_d1.json").read_text())["runs"]["weak_d1"]["knn_top1"] >= 0
    assert not (tmp_path / "runs" / "strong_d4").exists()  # nothing else trained
    with pytest.raises(ValueError, match="unknown run"):
        study.run_only(["nope"], tmp_path / "runs", 2, 2, 8, EXTRA, "cpu", "cmd")
