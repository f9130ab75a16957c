"""Training health (iwm.eval.health): the collapse detector, and that measuring health leaves
training untouched and reads the same after a resume."""

import json
import logging

import pytest
import torch

from iwm import config
from iwm.checkpoint import load_checkpoint
from iwm.eval.health import HealthMonitor, collapse_signs, effective_rank, feature_std
from iwm.train import Trainer, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_effective_rank_and_std_of_known_features():
    assert effective_rank(torch.eye(8)) == pytest.approx(8.0, rel=1e-4)
    assert effective_rank(torch.ones(16, 8)) == pytest.approx(1.0, rel=1e-4)
    assert feature_std(torch.ones(16, 8) * torch.arange(1.0, 9.0)) == pytest.approx(0.0, abs=1e-9)
    iso = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    assert feature_std(iso) == pytest.approx(1.0, abs=0.05)
    assert collapse_signs(0.5, 10.0, 0.05, 2.0) == []
    assert len(collapse_signs(0.0, 1.0, 0.05, 2.0)) == 2
    nan = torch.full((4, 3), float("nan"))
    assert collapse_signs(feature_std(nan), effective_rank(nan), 0.05, 2.0) == [
        "the target encoder's features are not finite"]


def test_detector_fires_on_a_constant_encoder_and_not_on_a_random_one(tiny_overrides, caplog):
    cfg = config.from_dict(None, tiny_overrides)
    monitor = HealthMonitor(cfg)
    model = build_model(cfg)
    with caplog.at_level(logging.WARNING, logger="iwm.eval.health"):
        healthy = monitor(model, 0)
    assert not healthy["collapse"] and not caplog.records
    assert healthy["feature_std"] > cfg.eval.collapse_std and healthy["effective_rank"] > cfg.eval.collapse_rank
    # the target encoder's final norm with zero gain: every image gets the same features
    with torch.no_grad():
        model.target_encoder.norm.weight.zero_()
        model.target_encoder.norm.bias.copy_(torch.linspace(-1, 1, model.target_encoder.embed_dim))
    with caplog.at_level(logging.WARNING, logger="iwm.eval.health"):
        collapsed = monitor(model, 1)
    assert collapsed["collapse"]
    assert collapsed["feature_std"] < 1e-6 and collapsed["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    assert "signs of collapse" in caplog.text and "eval.collapse_rank" in caplog.text


def test_record_has_every_figure_and_leaves_modes_and_rng_alone(tiny_overrides):
    cfg = config.from_dict(None, tiny_overrides)
    monitor = HealthMonitor(cfg)
    model = build_model(cfg)
    model.target_encoder.eval()
    rng = torch.get_rng_state()
    rec = monitor(model, 5)
    assert torch.equal(rng, torch.get_rng_state())
    assert model.encoder.training and model.predictor.training and not model.target_encoder.training
    assert rec["kind"] == "health" and rec["step"] == 5
    for key in ("knn_top1", "knn_top1_pixels", "mrr", "mrr_chance", "feature_std", "effective_rank",
                "loss_all", "loss_jitter", "loss_grayscale", "loss_blur", "loss_solarize"):
        assert isinstance(rec[key], float), key
    # the pixels separate the synthetic classes well: the reference a representation must beat
    assert rec["knn_top1_pixels"] > 0.8
    # the per-family losses differ (different sources), the figures repeat exactly
    assert len({rec[f"loss_{f}"] for f in ("jitter", "grayscale", "blur", "solarize")}) == 4
    again = monitor(model, 5)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in rec.items() if k != "seconds"}


def test_identity_transformations_report_the_loss_only_as_a_whole(tiny_overrides):
    cfg = config.from_dict(None, tiny_overrides + ["aug.strength=0", "predictor.conditioning=none"])
    rec = HealthMonitor(cfg)(build_model(cfg), 0)
    assert [k for k in rec if k.startswith("loss_")] == ["loss_all"]
    assert rec["mrr"] is None  # every bank entry is the same image: ranks mean nothing


def _records(run_dir, kind):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_health_on_or_off_trains_bitwise_the_same(tmp_path, tiny_overrides):
    base = tiny_overrides + ["optim.max_steps=3", "data.synthetic_size=40"]

    def train(name, every):
        trainer = Trainer(config.from_dict(None, base + [f"run.out_dir={tmp_path / name}", f"eval.every={every}"]))
        return trainer.fit()  # building the model seeds the global RNG: both runs start alike

    a, b = train("on", 2), train("off", 0)
    assert a.losses == b.losses
    on, off = (load_checkpoint(tmp_path / name / "checkpoints" / "latest.pt") for name in ("on", "off"))
    for name in ("encoder", "predictor", "target_encoder"):
        assert all(torch.equal(on[name][k], off[name][k]) for k in on[name]), name
    # the global random stream the checkpoint saved is untouched by the health checks
    assert torch.equal(on["rng"]["torch"], off["rng"]["torch"])
    # at the start, every eval.every steps and at the last step; none when off
    assert [r["step"] for r in _records(tmp_path / "on", "health")] == [0, 2, 3]
    assert _records(tmp_path / "off", "health") == []
    assert [r["step"] for r in _records(tmp_path / "on", "train")] == [1, 2, 3]
    assert (tmp_path / "on" / "health.png").stat().st_size > 0
    assert not (tmp_path / "off" / "health.png").exists()


def test_resumed_run_reports_the_same_health(tmp_path, tiny_overrides):
    base = tiny_overrides + ["optim.max_steps=4", "run.ckpt_every=2", "data.synthetic_size=40", "eval.every=2"]
    Trainer(config.from_dict(None, base + [f"run.out_dir={tmp_path / 'a'}"])).fit()
    split = config.from_dict(None, base + [f"run.out_dir={tmp_path / 'b'}"])
    Trainer(split).fit(until=3)
    Trainer(split).fit()

    def figures(run):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in _records(tmp_path / run, "health")]

    assert [r["step"] for r in figures("a")] == [0, 2, 4]
    assert figures("b") == figures("a")
