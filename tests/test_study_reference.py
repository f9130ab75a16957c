"""``iwm study reference`` on tiny synthetic runs: the finished runs are measured against raw
pixels and random init, unfinished ones are listed, and the scores reach ``iwm ship``."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY, make_seg_folder
from iwm.api import load
from iwm.cli import main
from iwm.registry import ship
from iwm.sharing import collect_scores
from iwm.studies import reference
from iwm.studies.leverage import TABLE4
from iwm.studies.reference import KINDS, PIXEL_KINDS, TABLE4_RANDOM, model_config, run_study, verdict
from iwm.train import Trainer, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

EXTRA = TINY + ["data.dataset=synthetic", "eval.knn_train=32", "eval.knn_test=16", "eval.every=4"]


def _cells(md: str, first_cell: str, after: str = "") -> list[str]:
    md = md[md.index(after):] if after else md
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r}")


def _tiny_settings(tmp_path) -> dict:
    """The study's settings cut down to a few images and one epoch of each head."""
    return {**reference.default_reference_settings(), "train_size": 32, "test_size": 16, "attentive_epochs": 1,
            "finetune_epochs": 1, "finetune_batch": 8, "seg_epochs": 1, "seg_batch": 2,
            "seg_data": str(make_seg_folder(tmp_path / "seg")), "mrr_images": 2, "mrr_bank": 8}


def test_study_measures_finished_runs_lists_the_others_and_feeds_ship(tmp_path, monkeypatch):
    runs, out = tmp_path / "runs", tmp_path / "docs" / "reference_models.md"
    extra = EXTRA + [f"data.cache_dir={tmp_path / 'cache'}"]
    pretrain(model_config("cifar10_equi", runs, 1, "cpu", extra))  # finished: 8 steps
    Trainer(model_config("cifar10_inv", runs, 1, "cpu", extra)).fit(until=3)  # stopped half-way
    settings = _tiny_settings(tmp_path)
    run_study(out, runs, 1, settings, [m.name for m in reference.MODELS], device="cpu", overrides=extra,
              progress=False)

    saved = json.loads((runs / "reference.json").read_text())
    assert json.loads(out.with_suffix(".json").read_text()) == saved
    equi, inv, ijepa = (saved["models"][n] for n in ("cifar10_equi", "cifar10_inv", "cifar10_ijepa"))
    assert (equi["steps"], inv["steps"], ijepa["steps"]) == (8, 3, 0) and inv["total_steps"] == 8
    assert "trained" not in inv and "trained" not in ijepa  # unfinished runs are not measured
    # the equivariant model also gets the paper's Table 4; random init, encoder FT (from scratch)
    assert list(equi["trained"]) == [*KINDS, *TABLE4] and list(equi["random"]) == [*KINDS, *TABLE4_RANDOM]
    assert list(saved["pixels"]) == list(PIXEL_KINDS)
    assert equi["trained"]["knn"]["key"]["step"] == 8 and equi["random"]["knn"]["key"]["step"] == 0
    assert equi["trained"]["knn"]["top1"] != equi["random"]["knn"]["top1"] or \
        equi["trained"]["mrr"]["mrr"] != equi["random"]["mrr"]["mrr"]  # training changed the network
    assert saved["pixels"]["linear"]["features"] == "raw pixels"
    made_by = {"code": saved["code"], "device": saved["device"]}  # each measurement says what made it
    rows = [*equi["trained"].values(), *equi["random"].values(), *saved["pixels"].values()]
    assert all({k: row[k] for k in made_by} == made_by for row in rows)
    assert [r["step"] for r in equi["curves"]] == [0, 4, 8] and equi["curves"][-1]["epoch"] == 1.0
    assert (out.parent / "reference_curves.png").stat().st_size > 0

    md = out.read_text()
    assert f"measured by code {saved['code']} on {saved['device']} (" in md
    t, r, p = equi["trained"], equi["random"], saved["pixels"]
    assert _cells(md, "kNN top-1 (README protocol)", "## IWM-equivariant")[1:] == [
        f"**{100 * t['knn']['top1']:.2f} %**", f"{100 * r['knn']['top1']:.2f} %", f"{100 * p['knn']['top1']:.2f} %"]
    assert _cells(md, "MRR, 8-entry bank, clean source (the paper's protocol)", "## IWM-equivariant")[1:] == [
        f"**{t['mrr']['mrr']:.4f}**", f"{r['mrr']['mrr']:.4f}", "—"]
    assert _cells(md, "MRR, 8-entry bank, augmented source (our pages before 2026-12)", "## IWM-equivariant")[1:] \
        == [f"**{t['mrr_augmented']['mrr']:.4f}**", f"{r['mrr_augmented']['mrr']:.4f}", "—"]
    assert t["mrr"]["source"] == "clean" and t["mrr_augmented"]["source"] == "augmented"
    table4 = "## Table 4 analogue"
    assert _cells(md, "encoder FT", table4)[1:4] == ["pooled", f"**{100 * t['encoder']['top1']:.2f} %**",
                                                      f"{100 * r['encoder']['top1']:.2f} %"]
    assert _cells(md, "random predictor FT (frozen encoder)", table4)[1:5] == [
        "attentive", f"**{100 * t['random_predictor']['top1']:.2f} %**", "—",
        f"{t['random_predictor']['trainable_params']:,}"]
    assert "**not finished**: 3 of 8 steps" in _cells(md, "IWM-invariant")[2]
    assert "optim.epochs=1" in _cells(md, "I-JEPA")[4] and _cells(md, "I-JEPA")[3] == "—"
    assert float(_cells(md, "IWM-equivariant")[3]) == pytest.approx(equi["train_hours"], abs=0.01)
    assert 0 < equi["train_hours"] < 1
    assert "not measured yet (cifar10_inv)" in _cells(md, "IWM-invariant beats IWM-equivariant in linear probing")[1]

    # the run directory holds the scores as `iwm eval` / `iwm leverage` write them: shipping carries them
    scores = collect_scores(runs / "cifar10_equi")
    assert scores["knn_top1"] == t["knn"]["top1"] and scores["mrr"] == t["mrr"]["mrr"]
    assert scores["mrr_augmented_source"] == t["mrr_augmented"]["mrr"]
    assert scores["probe_linear_top1"] == t["linear"]["top1"]
    assert scores["finetune_predictor_top1"] == t["predictor_ft"]["top1"]
    assert scores["finetune_end2end_top1"] == t["end2end"]["top1"]
    assert scores["segment_encoder_miou"] == t["seg_encoder"]["miou"]
    entry = ship(load(runs / "cifar10_equi"), "cifar10_equi", root=tmp_path / "weights")
    assert entry["scores"]["knn_top1"] == t["knn"]["top1"]

    def no_work(*args, **kwargs):
        raise AssertionError("a stored measurement was redone")

    monkeypatch.setattr(reference, "measure", no_work)
    run_study(out, runs, 1, settings, [m.name for m in reference.MODELS], device="cpu", overrides=extra,
              progress=False)
    assert json.loads((runs / "reference.json").read_text())["models"]["cifar10_equi"]["trained"] == t

    # retrained with other transformations, the model ends at the same step: none of its old scores
    # stand; at random init only the MRR bank changed
    for name in ("cifar10_equi", "cifar10_inv"):  # the half-trained one was trained with the old settings
        shutil.rmtree(runs / name)
    pretrain(model_config("cifar10_equi", runs, 1, "cpu", [*extra, "aug.brightness=0.3"]))
    redone = []

    def again(run, kind, *args, **kwargs):
        redone.append((run.step, kind))
        return {k: v for k, v in (t if run.step else r)[kind].items() if k not in ("key", "code", "device")}

    monkeypatch.setattr(reference, "measure", again)
    run_study(out, runs, 1, settings, ["cifar10_equi"], device="cpu", overrides=[*extra, "aug.brightness=0.3"],
              progress=False)
    assert redone == [(8, kind) for kind in (*KINDS, *TABLE4)] + [(0, "mrr"), (0, "mrr_augmented")]

    # the strong-jitter model has the equivariant one's architecture, data and seed, so the same
    # random init: of that, only the MRR bank (its own transformations) is measured
    pretrain(model_config("cifar10_equi_strong", runs, 1, "cpu", [*extra, "aug.brightness=0.3"]))
    redone.clear()
    study = run_study(out, runs, 1, settings, ["cifar10_equi_strong"], device="cpu",
                      overrides=[*extra, "aug.brightness=0.3"], progress=False)
    assert redone == [(8, kind) for kind in KINDS] + [(0, "mrr"), (0, "mrr_augmented")]
    strong, equi = study["models"]["cifar10_equi_strong"], study["models"]["cifar10_equi"]
    assert all(strong["random"][k] == equi["random"][k] for k in KINDS if not k.startswith("mrr"))


def test_a_difference_one_seed_cannot_tell_is_not_resolved():
    assert verdict("linear", 0.5433, 0.5398) == verdict("linear", 0.5398, 0.5433) \
        == "not resolved (within 1 point, one seed)"
    assert verdict("linear", 0.5433, 0.5300) == "holds" and verdict("linear", 0.5300, 0.5433) == "does not hold"
    assert verdict("mrr", 0.0705, 0.0488) == "holds" and verdict("mrr", 0.0705, 0.0690).startswith("not resolved")
    assert verdict("encoder", 0.50, 0.505, tie_holds=True).startswith("holds: not resolved")


def test_unknown_model_is_refused_in_one_line(capsys):
    assert main(["study", "reference", "--models", "cifar10_nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cifar10_nope" in err and "cifar10_equi" in err


def test_every_reference_model_has_a_shipped_config_and_a_hub_entry():
    # three lists name the reference models (the study, the registry, hubconf via the registry's test)
    from iwm.config import shipped_configs
    from iwm.registry import REFERENCE_MODELS

    names = [m.name for m in reference.MODELS]
    assert sorted(names) == sorted(REFERENCE_MODELS) and set(names) <= set(shipped_configs())
    assert set(reference.EQUIVARIANT) <= set(names) and reference.TABLE4_MODEL in names


def test_ijepa_is_measured_on_the_others_transformations(tmp_path):
    # I-JEPA trains without transformations and its predictor takes no action: its MRR bank holds
    # the strength-1 transformations of the IWM configs, and every protocol runs on its networks
    runs, out = tmp_path / "runs", tmp_path / "docs" / "reference_models.md"
    extra = EXTRA + [f"data.cache_dir={tmp_path / 'cache'}"]
    pretrain(model_config("cifar10_ijepa", runs, 1, "cpu", extra))
    settings = _tiny_settings(tmp_path)
    study = run_study(out, runs, 1, settings, ["cifar10_ijepa"], device="cpu", overrides=extra, progress=False)

    ijepa = study["models"]["cifar10_ijepa"]
    assert load(runs / "cifar10_ijepa").config.predictor.conditioning == "none"
    assert list(ijepa["trained"]) == list(KINDS) and list(ijepa["random"]) == list(KINDS)  # no Table 4
    for row in (ijepa["trained"]["mrr"], ijepa["random"]["mrr"], ijepa["trained"]["mrr_augmented"]):
        assert row["bank_strength"] == 1.0 and 0 < row["mrr"] <= 1
    md, knn = out.read_text(), ijepa["trained"]["knn"]["top1"]
    assert _cells(md, "kNN top-1 (README protocol)", "## I-JEPA")[1] == f"**{100 * knn:.2f} %**"
    assert "not measured yet (cifar10_inv)" in _cells(md, "IWM-invariant beats I-JEPA in linear probing")[1]


def test_a_model_whose_run_is_gone_is_measured_from_its_shipped_weights(tmp_path, monkeypatch):
    """A fresh clone has the shipped weights and the stored study, not the runs: the study keeps
    what was stored, moves a stored pre-clean-protocol MRR to the augmented row, measures the
    clean-source MRR from the weights, and (--update-shipped) writes it into the package."""
    from iwm import registry

    monkeypatch.setenv(registry.ROOT_ENV, str(tmp_path / "weights"))
    runs, out = tmp_path / "runs", tmp_path / "docs" / "reference_models.md"
    extra = EXTRA + [f"data.cache_dir={tmp_path / 'cache'}"]
    pretrain(model_config("cifar10_equi", runs, 1, "cpu", extra))
    registry.ship(load(runs / "cifar10_equi"), "cifar10_equi")
    made = []

    def fake(run, kind, s, device, progress, pixels=False):
        made.append((run.step, kind, str(run.path)))
        if kind.startswith("mrr"):
            return {"mrr": 0.3 if kind == "mrr" else 0.1, "chance": 0.1, "settings": {"bank_size": 8},
                    "source": reference.MRR_SOURCES[kind]}
        if kind == "seg_encoder":
            return {"miou": 0.2}
        return {"top1": 0.5, "bank": 32, "test": 16, "k": 20, "temperature": 0.07, "trainable_params": 1,
                "seconds_per_epoch": 1.0, "settings": {"head": "attentive"}}

    monkeypatch.setattr(reference, "measure", fake)
    settings = _tiny_settings(tmp_path)
    run_study(out, runs, 1, settings, ["cifar10_equi"], device="cpu", overrides=extra, progress=False)
    stored = json.loads((runs / "reference.json").read_text())
    equi = stored["models"]["cifar10_equi"]
    for part in ("trained", "random"):  # as stored before the clean protocol: "mrr" was the augmented one
        old = equi[part].pop("mrr_augmented")
        equi[part]["mrr"] = {**old, "mrr": 0.07}
        equi[part]["mrr"].pop("source", None)
    curves = equi["curves"]
    (runs / "reference.json").write_text(json.dumps(stored))
    shutil.rmtree(runs / "cifar10_equi")

    made.clear()
    study = run_study(out, runs, 1, settings, ["cifar10_equi"], device="cpu", overrides=extra, progress=False,
                      update_shipped=True)
    equi = study["models"]["cifar10_equi"]
    assert [(step, kind) for step, kind, _ in made] == [(8, "mrr"), (0, "mrr")]  # nothing else measured again
    assert Path(made[0][2]) == registry.shipped_folder("cifar10_equi")  # the shipped weights were measured
    assert equi["steps"] == 8 and "pretrained:cifar10_equi" in equi["weights"] and equi["curves"] == curves
    assert equi["trained"]["mrr"]["mrr"] == 0.3 and equi["trained"]["mrr_augmented"]["mrr"] == 0.07
    assert "Measured from the shipped fp16 weights" in out.read_text()
    entry = registry.manifest()["models"]["cifar10_equi"]
    assert entry["scores"]["mrr"] == 0.3 and entry["scores"]["mrr_augmented_source"] == 0.07
    assert entry["scores"]["knn_top1"] == 0.5
    folder = registry.shipped_folder("cifar10_equi")  # the new config.json matches its new sha256
    assert json.loads((folder / "config.json").read_text())["scores"] == entry["scores"]
    assert "| mrr_augmented_source | 0.0700 |" in (folder / "README.md").read_text()
