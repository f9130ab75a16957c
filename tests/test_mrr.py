import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import iwm
from iwm import config
from iwm.config import AugConfig
from iwm.data import normalize
from iwm.eval import mrr
from iwm.commands import evaluate, figures
from iwm.eval.mrr import FAMILIES, chance_mrr, compute_mrr, format_table, reciprocal_ranks
from iwm.train import Trainer
from iwm.viz import retrieval


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_run(tiny_overrides):
    cfg = config.from_dict(None, tiny_overrides + ["optim.max_steps=2"])
    Trainer(cfg).fit()
    return Path(cfg.run.out_dir)


def _oracle(trial: mrr.Trial) -> torch.Tensor:
    """Each entry's own tokens at its own targets: what a perfect world model predicts."""
    idx, _ = trial.targets
    return torch.stack([trial.bank_tokens[k, idx[k]] for k in range(len(idx))])


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
    a = compute_mrr(run, num_images=3, bank_size=8, seed=5, source="augmented")
    b = compute_mrr(run, num_images=3, bank_size=8, seed=5, source="augmented")
    assert a == b
    assert list(a["families"]) == list(FAMILIES) and a["mrr"] == a["families"]["all"]["mrr"]
    for r in a["families"].values():
        assert 0 < r["mrr"] <= 1 and r["mrr_se"] >= 0
        assert r["floor"] is None  # nothing moves pixels: chance is the floor
        assert r["count"] == 3 * 8
    assert a["meaningful"] and "| grayscale |" in format_table(a)
    # wiring: a predictor that hits every bank entry scores 1; one fixed prediction scores chance
    oracle = lambda self, trial, s, actions, place=None: _oracle(trial)  # noqa: E731
    fixed = lambda self, trial, s, actions, place=None: _oracle(trial)[:1].expand(len(actions), -1, -1)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mrr.Probe, "predict", oracle)
        o = compute_mrr(run, num_images=2, bank_size=8, source="augmented")["families"]
        c = compute_mrr(run, num_images=2, bank_size=8)
        mp.setattr(mrr.Probe, "predict", fixed)
        f = compute_mrr(run, num_images=2, bank_size=8)
    assert all(r["mrr"] == 1.0 for r in o.values())
    assert c["mrr"] == 1.0 and c["chance"] == pytest.approx(chance_mrr(8))
    assert f["mrr"] == pytest.approx(chance_mrr(8))
    # user images, one family
    imgs = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    c = compute_mrr(run, images=imgs, bank_size=4, families=["blur"], source="augmented")
    assert list(c["families"]) == ["blur"] and c["families"]["blur"]["count"] == 8
    # the clean source scores the families that transform the target (the paper's: the jitter), not the others
    for wrong in (["all"], ["blur"]):
        with pytest.raises(ValueError, match="clean source scores the families jitter"):
            compute_mrr(run, images=imgs, bank_size=4, families=wrong)
    # identity transformations (I-JEPA): reported, not a crash; an explicit bank config still works
    d = compute_mrr(run, num_images=2, bank_size=4, aug=AugConfig(strength=0.0))
    assert not d["meaningful"] and d["mrr"] is None and "not meaningful" in format_table(d)
    assert compute_mrr(run, num_images=1, bank_size=4, aug=AugConfig(strength=1.0))["meaningful"]
    with pytest.raises(ValueError, match="unknown MRR source"):
        compute_mrr(run, num_images=1, bank_size=4, source="jittered")


def test_default_mrr_feeds_the_clean_image_with_the_action_from_it(tiny_run, monkeypatch):
    """The paper's protocol: the context encoder sees the untouched test image, and a_x->y_k is
    the action from the identity to bank entry k (no source jitter, no destructive flag)."""
    run = iwm.load(tiny_run)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    seen, acts = [], []
    tokens, predictor = run.encoder.tokens, run.predictor.forward
    monkeypatch.setattr(run.encoder, "tokens", lambda x, *a, **k: seen.append(x.clone()) or tokens(x, *a, **k))
    monkeypatch.setattr(run.predictor, "forward",
                        lambda *a, **k: acts.append(a[3].clone()) or predictor(*a, **k))
    res = compute_mrr(run, images=images, bank_size=6)
    assert res["source"] == "clean" and res["count"] == 2 * 6
    # one family transforms the target: its bank is the headline's, and so are its scores
    assert res["families"] == {"jitter": {k: res[k] for k in res["families"]["jitter"]}}
    assert len(seen) == 2
    for x, image in zip(seen, images):
        assert torch.equal(x, normalize(image.float().div(255.0).unsqueeze(0)))
    a = torch.cat(acts)
    assert torch.equal(a[:, 4:], torch.zeros_like(a[:, 4:]))  # nothing destructive to undo
    # the bank's own jitter, measured from the identity: brightness factor minus 1, and so on
    probe = mrr.Probe(run)
    trial = probe.trial(images[0], 6, mrr.image_generator(0, 0))
    step = trial.masks.targets.shape[1] if probe.per_block else 1  # per block: one row per target block
    assert torch.allclose(acts[0][:6 * step:step, 0], trial.bank_params["jitter"]["brightness"] - 1.0)


def test_clean_and_augmented_sources_share_banks_and_masks(tiny_run, monkeypatch):
    """Image for image, compute_mrr ranks both protocols against the same bank with the same mask;
    only the source differs: the untouched image, or the sampled transformation."""
    run = iwm.load(tiny_run)
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    trial, predict = mrr.Probe.trial, mrr.Probe.predict
    seen: dict[str, list] = {}

    def record(source):
        def recording_trial(self, *a, **k):
            t = trial(self, *a, **k)
            seen[source].append((t.bank_tokens, t.masks.targets, t.masks.context))
            return t

        def recording_predict(self, t, s, actions):
            seen[source + " sources"].append(s)
            return predict(self, t, s, actions)

        monkeypatch.setattr(mrr.Probe, "trial", recording_trial)
        monkeypatch.setattr(mrr.Probe, "predict", recording_predict)

    for source, families in (("clean", None), ("augmented", ["all"])):  # the clean source: its one bank
        seen[source], seen[source + " sources"] = [], []
        record(source)
        compute_mrr(run, images=images, bank_size=5, families=families, source=source)
    assert len(seen["clean"]) == len(seen["augmented"]) == 3
    for (bank_a, tgt_a, ctx_a), (bank_b, tgt_b, ctx_b) in zip(seen["clean"], seen["augmented"]):
        assert torch.equal(bank_a, bank_b) and torch.equal(tgt_a, tgt_b) and torch.equal(ctx_a, ctx_b)
    assert all(s is None for s in seen["clean sources"])
    assert all(s is not None for s in seen["augmented sources"])


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
    evaluate.add_cli(sub)
    figures.add_cli(sub)

    args = ap.parse_args(["eval", "mrr", str(tiny_run), "--images", "2", "--bank", "4", "--no-progress"])
    assert (args.images, args.bank, args.seed, args.device) == (2, 4, 0, "cpu")
    assert args.fn(args) == 0
    res = json.loads((tiny_run / "mrr.json").read_text())
    assert res["settings"]["bank_size"] == 4 and res["source"] == "clean" and list(res["families"]) == ["jitter"]
    assert res["families"]["jitter"]["mrr"] == res["mrr"]
    assert "| clean" in capsys.readouterr().out
    args = ap.parse_args(["eval", "mrr", str(tiny_run), "--images", "2", "--bank", "4", "--no-progress",
                          "--source", "augmented"])
    assert args.fn(args) == 0
    res = json.loads((tiny_run / "mrr_augmented.json").read_text())
    assert res["source"] == "augmented" and set(res["families"]) == set(FAMILIES)
    assert "| grayscale" in capsys.readouterr().out
    args = ap.parse_args(["eval", "mrr", str(tiny_run), "--images", "2", "--bank", "4", "--no-progress",
                          "--shared-context"])
    assert args.fn(args) == 0  # its own file, beside the leak-free context's
    assert json.loads((tiny_run / "mrr_shared.json").read_text())["settings"]["context"] == "shared"
    assert json.loads((tiny_run / "mrr.json").read_text())["settings"]["context"] == "leak-free"

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
    t = trial.bank_params["jitter"]
    untouched = (t["brightness"] == 1) & (t["contrast"] == 1) & (t["saturation"] == 1) & (t["hue"] == 0)
    assert not untouched.any()
    flat = trial.bank_images.flatten(1)
    assert not (flat == trial.image.flatten(1)).all(1).any()  # no entry is the image itself
