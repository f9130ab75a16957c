"""``iwm study leverage`` on tiny synthetic runs and a hand-made segmentation folder."""

import json
import shutil

import pytest

from conftest import TINY, make_seg_folder
from iwm.studies import leverage
from iwm.studies.leverage import CLASSIFICATION, MODELS, PIXEL_KINDS, PIXELS, SEGMENTATION, TABLE4, run_study
from iwm.studies.world_model import GRID, VERDICT

pytestmark = pytest.mark.usefixtures("one_thread")

EXTRA = TINY + ["data.dataset=synthetic", "eval.knn_train=32", "eval.knn_test=16"]


def test_models_are_runs_of_the_world_model_grid():
    names = {r.name: r for r in GRID}
    assert [m.run for m in MODELS] == ["weak_d1", "strong_d4", "ijepa"]
    assert "aug.strength=0.5" in names["weak_d1"].overrides and "predictor.depth=1" in names["weak_d1"].overrides
    assert "aug.strength=1.0" in names["strong_d4"].overrides and "predictor.depth=4" in names["strong_d4"].overrides


def _row(md: str, first_cell: str) -> list[str]:
    rows = [line for line in md.splitlines() if line.startswith(f"| {first_cell} |")]
    assert rows, f"no row {first_cell!r}"
    return [c.strip() for c in rows[0].strip("|").split("|")]


def test_study_evaluates_every_model_writes_the_page_and_resumes(tmp_path, monkeypatch):
    seg = make_seg_folder(tmp_path / "seg")
    settings = {**leverage.default_settings(), "train_size": 32, "test_size": 16, "attentive_epochs": 1,
                "finetune_epochs": 1, "finetune_batch": 8, "seg_epochs": 1, "seg_batch": 2, "seg_data": str(seg)}
    out, runs = tmp_path / "docs" / "leverage.md", tmp_path / "runs"
    extra = EXTRA + [f"data.cache_dir={tmp_path / 'cache'}"]
    res = run_study(out, runs, steps=2, settings=settings, extra_overrides=extra, device="cpu", table4=True,
                    multitask=True, progress=False)

    saved = json.loads((runs / "leverage.json").read_text())
    assert json.loads(out.with_suffix(".json").read_text()) == saved  # the raw numbers beside the page
    assert set(saved["models"]) == {m.label for m in MODELS} | {PIXELS}
    pixels = saved["models"][PIXELS]["evals"]
    assert list(pixels) == list(PIXEL_KINDS) and all(r["features"] == "raw pixels" for r in pixels.values())
    assert pixels["linear"]["trainable_params"] > saved["models"]["I-JEPA"]["evals"]["linear"]["trainable_params"]
    for m in MODELS:
        ev = saved["models"][m.label]["evals"]
        extra_kinds = TABLE4 if m.run == "strong_d4" else ()
        assert list(ev) == [*CLASSIFICATION, *SEGMENTATION, *extra_kinds, *(["multitask"] if extra_kinds else [])]
        assert all(0.0 <= ev[k]["top1"] <= 1.0 for k in (*CLASSIFICATION, *extra_kinds))
        assert all(0.0 <= ev[k]["miou"] <= 1.0 for k in SEGMENTATION)
        assert ev["predictor_ft"]["settings"]["train"] == 32 and ev["linear"]["settings"]["test"] == 16
        assert ev["seg_encoder"]["settings"]["num_classes"] == 3
    # predictor finetuning trains the predictor (1 block for the invariant run, 4 for the equivariant)
    inv, equi = (saved["models"][m]["evals"]["predictor_ft"]["trainable_params"] for m in
                 ("IWM-invariant", "IWM-equivariant"))
    assert equi > inv
    assert (out.parent / "leverage_spectrum.png").stat().st_size > 0

    md = out.read_text()
    assert md.count(VERDICT) == 3 and "CPU, 1 threads" in md and "Table 4 analogue" in md
    mt = saved["models"]["IWM-equivariant"]["evals"]["multitask"]
    assert [r["task"] for r in mt["rows"]] == ["classes", "first_half_vs_rest"]  # synthetic data: the default split
    assert _row(md, "first_half_vs_rest")[2:] == [f"{100 * mt['rows'][1]['multi_top1']:.2f}",
                                      f"{100 * mt['rows'][1]['single_top1']:.2f}"]
    for m in MODELS:
        ev = saved["models"][m.label]["evals"]
        assert _row(md, m.label)[2:8] == ([f"{100 * ev[k]['top1']:.2f}" for k in CLASSIFICATION]
                                          + [f"{100 * ev[k]['miou']:.2f}" for k in SEGMENTATION])
    assert _row(md, f"{PIXELS} (reference)")[2:8] == (
        [f"{100 * pixels[k]['top1']:.2f}" for k in PIXEL_KINDS] + ["n/a"] * 3)
    equi = saved["models"]["IWM-equivariant"]["evals"]
    assert _row(md, "encoder FT")[1:4] == ["pooled", "-", f"{100 * equi['encoder']['top1']:.2f}"]
    # the paper's predictor finetuning: attentive head, the pretrained predictor at a tenth of the lr
    assert _row(md, "predictor FT")[1:3] == ["attentive", f"{0.1 * settings['finetune_lr']:g}"]
    assert _row(md, "random predictor FT")[1:3] == ["attentive", f"{settings['finetune_lr']:g}"]
    assert equi["predictor_ft"]["settings"]["predictor_lr"] == pytest.approx(0.1 * settings["finetune_lr"])

    def no_work(*args, **kwargs):
        raise AssertionError("a stored evaluation was redone")

    monkeypatch.setattr(leverage, "evaluate", no_work)
    again = run_study(out, runs, steps=2, settings=settings, extra_overrides=extra, device="cpu", table4=True,
                      multitask=True, progress=False)
    assert again["models"] == res["models"]

    # a changed setting redoes exactly the evaluations it decides
    redone = []
    monkeypatch.setattr(leverage, "evaluate", lambda run, kind, *a, **k: redone.append(kind) or {
        "top1": 0.5, "trainable_params": 1, "seconds": 0.0, "seconds_per_epoch": 0.0, "settings": {}})
    run_study(out, runs, steps=2, settings={**settings, "attentive_epochs": 2}, extra_overrides=extra,
              device="cpu", table4=True, multitask=True, progress=False)
    assert redone == ["attentive"] * (len(MODELS) + 1)  # the pixels' attentive probe too
    redone.clear()
    changed = {**settings, "attentive_epochs": 2, "predictor_lr_ratio": 1.0}
    run_study(out, runs, steps=2, settings=changed, extra_overrides=extra, device="cpu", table4=True,
              multitask=True, progress=False)
    assert redone == ["predictor_ft"] * len(MODELS)

    # a run retrained with other settings ends at the same step: its evaluations are redone, the pixels' kept
    inv = next(m for m in MODELS if m.label == "IWM-invariant")
    shutil.rmtree(runs / inv.run)
    redone.clear()
    run_study(out, runs, steps=2, settings=changed, extra_overrides=extra + ["optim.lr=0.002"], device="cpu",
              only=[inv.run], progress=False)
    assert redone == [*CLASSIFICATION, *SEGMENTATION]


def test_cli_refuses_bad_counts(capsys):
    from iwm.cli import main

    assert main(["study", "leverage", "--seg-epochs", "0"]) == 2
    assert "--seg-epochs must be at least 1" in capsys.readouterr().err
    assert main(["study", "leverage", "--predictor-lr-ratio", "0"]) == 2
    assert "--predictor-lr-ratio must be > 0" in capsys.readouterr().err
