"""Weights out the way the field shares them: a Hub-style folder, timm, run arguments."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import iwm
from conftest import train_tiny
from iwm import sharing
from iwm.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    run = train_tiny(tmp_path_factory.mktemp("sharing"))
    (run / "knn.json").write_text(json.dumps({"top1": 0.375, "k": 20}))
    (run / "leverage_probe.json").write_text(json.dumps({"rows": [{"kind": "linear", "top1": 0.5}]}))
    return run


def images(n=2, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_save_pretrained_round_trip_with_config_and_model_card(run_path, tmp_path):
    run = iwm.load(run_path)
    folder = run.save_pretrained(tmp_path / "shared")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "encoder.safetensors",
                                                         "predictor.safetensors", "target_encoder.safetensors"]
    back = iwm.from_pretrained(folder)  # a local folder: no network
    assert back.step == run.step == 2 and back.config == run.config and back.out_dir == folder
    for a, b in ((run.encoder, back.encoder), (run.target_encoder, back.target_encoder),
                 (run.predictor, back.predictor)):
        for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(v, w), k
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "license: mit" in card and "library_name: iwm" in card
    # what the model is, its measured scores (read from the run's eval files), how it was trained
    assert "Image World Model" in card and "feature conditioning" in card
    assert "| knn_top1 | 0.3750 |" in card and "| probe_linear_top1 | 0.5000 |" in card
    assert "2 steps on `synthetic`" in card
    meta = json.loads((folder / "config.json").read_text())
    assert meta["scores"] == {"knn_top1": 0.375, "probe_linear_top1": 0.5} and meta["format"] == sharing.FORMAT


def test_fp16_weights_load_back_as_fp32(run_path, tmp_path):
    run = iwm.load(run_path)
    folder = run.save_pretrained(tmp_path / "half", dtype=torch.float16)
    assert load_file(str(folder / "encoder.safetensors"))["blocks.0.attn.qkv.weight"].dtype == torch.float16
    back = iwm.load(folder)
    assert back.encoder.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert torch.allclose(back.encode(images()), run.encode(images()), atol=1e-2)


def test_exported_encoder_loads_in_timm_and_gives_our_features(run_path, tmp_path, capsys):
    assert main(["export", str(run_path), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    weights = tmp_path / "out" / "target_encoder.safetensors"
    call = next(line.split("model = ", 1)[1] for line in printed.splitlines() if "timm.create_model(" in line)
    run = iwm.load(run_path)
    x = images()
    with torch.no_grad():  # the networks on already normalised input, as timm's
        ours_tokens, ours_pooled = run.target_encoder.tokens(x), run.target_encoder.pooled(x)
    model = eval(call, {"timm": timm}).eval()  # the exact call `iwm export` printed
    with torch.no_grad():
        assert torch.allclose(model(x), ours_pooled, atol=1e-6)
        assert torch.allclose(model.forward_features(x), ours_tokens, atol=1e-6)
    # and a plain VisionTransformer with a strict load_state_dict
    plain = timm.models.VisionTransformer(**sharing.timm_kwargs(run.config)).eval()
    plain.load_state_dict(load_file(str(weights)), strict=True)
    with torch.no_grad():
        assert torch.allclose(plain.forward_features(x), ours_tokens, atol=1e-6)


def test_export_refuses_a_file_name(run_path, tmp_path, capsys):
    assert main(["export", str(run_path), str(tmp_path / "w.safetensors")]) == 2
    assert "writes a folder" in capsys.readouterr().err


def test_every_command_takes_an_exported_folder(run_path, tmp_path, capsys):
    folder = iwm.load(run_path).save_pretrained(tmp_path / "shared")
    assert main(["eval", "knn", str(folder), "eval.knn_train=16", "eval.knn_test=8"]) == 0
    assert json.loads((folder / "knn.json").read_text())["bank"] == 16  # results go beside the weights
    assert main(["leverage", "probe", str(folder), "--kind", "linear", "--epochs", "1", "--train-size", "16",
                 "--test-size", "8", "--device", "cpu", "--no-progress"]) == 0
    assert (folder / "leverage_probe.json").is_file()


def test_a_missing_run_is_one_clear_line(tmp_path, capsys):
    assert main(["eval", "knn", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iwm: error: no run at") and "pretrained:NAME" in err and "\n" not in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    for name in sharing.NETWORKS:
        (tmp_path / "bad" / sharing.weight_file(name)).write_bytes(b"")
    assert main(["eval", "knn", str(tmp_path / "bad")]) == 2
    assert "not an iwm weights config" in capsys.readouterr().err


def test_scores_name_the_mrr_protocol_they_were_measured_by(tmp_path):
    """"mrr" is the paper's (clean source) only; an mrr.json from before the clean protocol, and
    the augmented source's file, are read as mrr_augmented_source, never as "mrr"."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "mrr.json").write_text(json.dumps({"families": {"all": {"mrr": 0.07}}}))
    assert sharing.collect_scores(old) == {"mrr_augmented_source": 0.07}
    new = tmp_path / "new"
    new.mkdir()
    (new / "mrr.json").write_text(json.dumps({"source": "clean", "mrr": 0.2, "families": {}}))
    (new / "mrr_augmented.json").write_text(json.dumps({"source": "augmented", "mrr": 0.1,
                                                        "families": {"all": {"mrr": 0.1}}}))
    assert sharing.collect_scores(new) == {"mrr": 0.2, "mrr_augmented_source": 0.1}
