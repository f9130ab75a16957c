import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import iwm
from iwm import config
from iwm.config import AugConfig
from iwm.eval import mrr
from iwm.eval.mrr import FAMILIES, add_cli, chance_mrr, compute_mrr, format_table, reciprocal_ranks
from iwm.train import Trainer
from iwm.viz import retrieval
from iwm.viz import add_cli as add_viz_cli


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_run(tiny_overrides):
    cfg = config.from_dict(None, tiny_overrides + ["optim.max_steps=2"])
    Trainer(cfg).fit()
    return Path(cfg.run.out_dir)


def test_oracle_predictor_ranks_first():
    bank = torch.randn(64, 5, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reciprocal_ranks(bank.clone(), bank), torch.ones(64, dtype=torch.float64))


def test_constant_predictor_is_near_chance():
    g = torch.Generator().manual_seed(1)
    k = 128
    bank = torch.randn(k, 4, 16, generator=g)
    pred = torch.randn(1, 4, 16, generator=g).expand(k, -1, -1)  # ignores which target it should hit
    mrr = reciprocal_ranks(pred, bank).mean().item()
    assert mrr < 3 * chance_mrr(k)
    assert mrr == pytest.approx(chance_mrr(k))  # one prediction: the ranks are a permutation of 1..K


def test_ties_count_against_the_prediction():
    k = 32
    bank = torch.randn(1, 3, 8).expand(k, -1, -1)
    pred = torch.randn(1, 3, 8).expand(k, -1, -1)
    assert torch.equal(reciprocal_ranks(pred, bank), torch.full((k,), 1.0 / k, dtype=torch.float64))


def test_ranks_are_deterministic():
    g = torch.Generator().manual_seed(2)
    pred, bank = torch.randn(50, 6, 8, generator=g), torch.randn(50, 6, 8, generator=g)
    assert torch.equal(reciprocal_ranks(pred, bank), reciprocal_ranks(pred, bank))


def test_compute_mrr_end_to_end(tiny_run):
    run = iwm.load(tiny_run)
    a = compute_mrr(run, num_images=3, bank_size=8, seed=5)
    b = compute_mrr(run, num_images=3, bank_size=8, seed=5)
    assert a == b
    assert list(a["families"]) == list(FAMILIES)
    for r in a["families"].values():
        assert 0 < r["mrr"] <= 1 and 0 < r["mrr_action_zeroed"] <= 1
        assert r["count"] == 3 * 8
    assert a["meaningful"] and "| grayscale |" in format_table(a)
    # wiring: a predictor that hits every bank entry scores 1; one fixed prediction scores chance
    oracle = lambda self, trial, s, actions: torch.cat([trial.bank_tokens, trial.bank_tokens[:1]])  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mrr.Probe, "predict", oracle)
        o = compute_mrr(run, num_images=2, bank_size=8)["families"]
    assert all(r["mrr"] == 1.0 and r["mrr_action_zeroed"] == pytest.approx(chance_mrr(8)) for r in o.values())
    # user images, one family
    imgs = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    c = compute_mrr(run, images=imgs, bank_size=4, families=["blur"])
    assert list(c["families"]) == ["blur"] and c["families"]["blur"]["count"] == 8
    # identity transformations (I-JEPA): reported, not a crash; an explicit bank config still works
    d = compute_mrr(run, num_images=2, bank_size=4, aug=AugConfig(strength=0.0))
    assert not d["meaningful"] and d["families"]["all"]["mrr"] is None and "not meaningful" in format_table(d)
    assert compute_mrr(run, num_images=1, bank_size=4, aug=AugConfig(strength=1.0))["meaningful"]


def test_retrieval_figure_size(tiny_run, tmp_path):
    run = iwm.load(tiny_run)
    path = retrieval.retrieval_figure(run, tmp_path / "fig.png", num_images=2, num_neighbours=3, bank_size=8,
                                      families=("all", "grayscale"))
    from PIL import Image

    rows, cols = 2 * 2, 3 + 3  # images x families; source, text, target + neighbours
    w_in, h_in = cols * retrieval.CELL, rows * retrieval.CELL + retrieval.HEADER
    with Image.open(path) as im:
        assert im.size == (round(w_in * retrieval.DPI), round(h_in * retrieval.DPI))


def test_cli_parsers_write_results(tiny_run, tmp_path, capsys):
    ap = argparse.ArgumentParser(prog="iwm")
    sub = ap.add_subparsers(dest="command", required=True)
    esub = sub.add_parser("eval").add_subparsers(dest="protocol", required=True)
    add_cli(esub)
    add_viz_cli(sub)

    args = ap.parse_args(["eval", "mrr", str(tiny_run), "--images", "2", "--bank", "4", "--no-progress"])
    assert (args.images, args.bank, args.seed, args.device) == (2, 4, 0, "cpu")
    assert args.fn(args) == 0
    res = json.loads((tiny_run / "mrr.json").read_text())
    assert res["settings"]["bank_size"] == 4 and set(res["families"]) == set(FAMILIES)
    assert "| all" in capsys.readouterr().out

    ckpt = tiny_run / "checkpoints" / "latest.pt"  # a checkpoint path resolves to its run directory
    args = ap.parse_args(["viz", "retrieval", str(ckpt), "--images", "1", "--bank", "4", "--neighbours", "2"])
    assert args.fn(args) == 0
    assert (tiny_run / "retrieval.png").is_file()

    out = tmp_path / "ijepa.json"  # --strength re-scales the bank transformations
    args = ap.parse_args(["eval", "mrr", str(tiny_run), "--images", "1", "--bank", "3", "--strength", "0",
                          "--no-progress", "--out", str(out)])
    assert args.fn(args) == 0 and json.loads(out.read_text())["meaningful"] is False


def test_weak_bank_has_no_untouched_entries(tiny_run):
    """At strength 0.5 every bank entry is still jittered: an untouched duplicate would tie with
    other untouched entries and cap even a perfect predictor's MRR near 0.5."""
    run = iwm.load(tiny_run)
    probe = mrr.Probe(run, dataclasses.replace(run.config.aug, strength=0.5))
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    trial = probe.trial(image, 256, torch.Generator().manual_seed(1))
    t = trial.bank_params
    untouched = (t.brightness == 1) & (t.contrast == 1) & (t.saturation == 1) & (t.hue == 0)
    assert not untouched.any()
    flat = trial.bank_images.flatten(1)
    assert not (flat == trial.image.flatten(1)).all(1).any()  # no entry is the image itself
