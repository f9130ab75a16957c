import json

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
