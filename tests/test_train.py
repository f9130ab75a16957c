import json
import logging

import pytest
import torch

from iwm import config
from iwm.train import Trainer, pretrain


def test_few_steps_lower_the_loss(tiny_overrides):
    cfg = config.from_dict(None, tiny_overrides + ["optim.max_steps=40", "optim.lr=0.002", "optim.warmup=0.1",
                                                   "data.synthetic_size=128"])
    res = pretrain(cfg)
    first = sum(v for _, v in res.losses[:5]) / 5
    last = sum(v for _, v in res.losses[-5:]) / 5
    assert res.steps == 40
    assert last < 0.8 * first
    run = res.run_dir
    assert (run / "config.yaml").is_file() and (run / "loss.png").stat().st_size > 0
    assert list((run / "tensorboard").iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in recs] == list(range(1, 41))
    assert {"step", "loss", "lr", "momentum", "images_per_s"} <= set(recs[0])
    # health at the start and the last step (eval.every is larger than the run), and its panel
    health = [r for r in rows if r["kind"] == "health"]
    assert [r["step"] for r in health] == [0, 40] and (run / "health.png").stat().st_size > 0
    assert health[-1]["loss_all"] < health[0]["loss_all"]


def _params(trainer):
    return {k: v.clone() for k, v in trainer.state_dict()["encoder"].items()}


def test_resume_continues_with_identical_state(tmp_path, tiny_overrides):
    base = tiny_overrides + ["optim.max_steps=6", "run.ckpt_every=2", "data.synthetic_size=40"]
    straight = Trainer(config.from_dict(None, base + [f"run.out_dir={tmp_path / 'a'}"]))
    full = straight.fit()

    split = config.from_dict(None, base + [f"run.out_dir={tmp_path / 'b'}"])
    first = Trainer(split).fit(until=3)  # stops mid-epoch (5 batches per epoch), checkpoints
    assert first.steps == 3
    resumed = Trainer(split)
    res = resumed.fit()  # a new trainer on the same directory picks up at step 3
    assert res.steps == 6
    assert res.losses == full.losses  # bitwise on the CPU, first three from the checkpoint
    for name in ("encoder", "predictor", "target_encoder"):
        a, b = straight.state_dict()[name], resumed.state_dict()[name]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    oa, ob = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in oa)


def test_gradient_accumulation_matches_full_batch(tmp_path, tiny_overrides):
    base = tiny_overrides + ["optim.max_steps=4"]
    full = pretrain(config.from_dict(None, base + [f"run.out_dir={tmp_path / 'full'}"]))
    accum = pretrain(config.from_dict(None, base + [f"run.out_dir={tmp_path / 'acc'}", "optim.accum_steps=2"]))
    a, b = [v for _, v in full.losses], [v for _, v in accum.losses]
    assert a == pytest.approx(b, rel=1e-4)


def test_auto_precision_follows_the_device_and_every_shipped_config_uses_it(monkeypatch):
    from iwm.config import resolve_config, shipped_configs
    from iwm.train import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    for name in shipped_configs():  # the cifar configs were auto already; the ImageNet ones said bf16
        cfg = config.load(resolve_config(name))
        assert cfg.run.precision == "auto", name
        assert resolve_precision(cfg.run.precision, torch.device("cpu")) is None, name  # fp32 on a CPU
        assert resolve_precision(cfg.run.precision, torch.device("cuda")) == torch.bfloat16, name


def test_explicit_bf16_on_the_cpu_is_honoured_with_a_warning_and_the_start_line_says_why(tiny_overrides, caplog,
                                                                                         tmp_path):
    quiet = tiny_overrides + ["eval.every=0", "optim.max_steps=1"]
    with caplog.at_level(logging.INFO, logger="iwm.train"):
        t = Trainer(config.from_dict(None, quiet + ["run.precision=bf16"]))
        t.fit()
    assert t.amp_dtype == torch.bfloat16
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("run.precision=bf16 on the CPU")
    assert "on cpu in bf16 (run.precision=bf16)" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="iwm.train"):
        t = Trainer(config.from_dict(None, quiet + [f"run.out_dir={tmp_path / 'auto'}"]))
        t.fit()
    assert t.amp_dtype is None and not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "on cpu in fp32 (run.precision=auto: bf16 on CUDA, fp32 on the CPU)" in caplog.text


def test_health_checks_on_the_cpu_at_large_image_sizes_measure_fewer_images(tiny_overrides, caplog):
    from iwm.config import resolve_config
    from iwm.train import CPU_HEALTH_SIZES, health_config

    vitb = config.load(resolve_config("imagenet_vitb16"))
    cut, note = health_config(vitb, torch.device("cpu"))
    assert {k: getattr(cut.eval, k) for k in CPU_HEALTH_SIZES} == CPU_HEALTH_SIZES
    assert note.startswith("health checks on the CPU at 224 px use eval.health_test=16")
    assert vitb.eval.health_test == 500  # the run's own config is left as it is
    assert health_config(vitb, torch.device("cuda")) == (vitb, None)  # GPUs: the sizes as set
    small = config.load(resolve_config("cifar10_equi"))
    assert health_config(small, torch.device("cpu")) == (small, None)  # 32 px: as before
    asked = config.from_dict(vitb.to_dict(), ["eval.health_test=100"])  # a size the user sets is kept
    assert health_config(asked, torch.device("cpu"))[0].eval.health_test == 100

    # a run at 96 px on the CPU with the default health sizes holds the cut ones, and says so
    base = [o for o in tiny_overrides if not o.startswith("eval.health")]
    cfg = config.from_dict(None, base + ["data.image_size=96", "model.patch_size=16"])
    with caplog.at_level(logging.INFO, logger="iwm.train"):
        t = Trainer(cfg)
    assert len(t.health.test) == 16 and len(t.health.bank) == 32
    assert "health checks on the CPU at 96 px use" in caplog.text
