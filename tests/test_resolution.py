"""Runs at an image size other than the pretraining one: positions rebuilt for the new grid."""

import json

import pytest
import torch
from timm.layers import build_sincos2d_pos_embed

import iwm
from conftest import train_tiny, make_seg_folder
from iwm import config
from iwm.cli import main
from iwm.config import ConfigError
from iwm.downstream.feeding import predict_all
from iwm.models import build_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    """A tiny two-step run at 16 px (a 4x4 grid), shared by the module's tests."""
    return train_tiny(tmp_path_factory.mktemp("resolution"))


def test_resize_rebuilds_the_sincos_positions_for_twice_the_size(run_path):
    run = iwm.load(run_path)
    before = run.encode(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    run.resize(32)
    assert run.config.data.image_size == 32 and run.target_encoder.grid == 8
    # the positions a run trained at 32 px would have: the same function of the new grid
    fresh = build_encoder(config.from_dict(run.config.to_dict()))
    for enc in (run.encoder, run.target_encoder):
        assert torch.equal(enc.pos_embed, fresh.pos_embed)
    assert torch.equal(run.predictor.pos_embed, build_sincos2d_pos_embed([8, 8], 32).unsqueeze(0))
    tokens = run.encode(torch.rand(2, 3, 32, 32))
    assert tokens.shape == (2, 64, 32) and torch.isfinite(tokens).all()
    assert predict_all(run.predictor, tokens).shape == (2, 64, 32)
    # the weights are untouched: back at 16 px the run computes what it did
    assert torch.allclose(run.resize(16).encode(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))),
                          before)


def test_sizes_that_cannot_work_are_clear_errors(run_path):
    run = iwm.load(run_path)
    with pytest.raises(ConfigError, match="not a multiple of the patch size 4 .try 28 or 32"):
        run.resize(30)
    with pytest.raises(ValueError, match=r"images are 32x32 px but the run takes 16x16.*run.resize\(32\)"):
        run.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ConfigError, match=r"mask\."):  # a grid too small for the run's masks
        run.resize(4)


def test_probes_finetuning_segmentation_and_knn_run_at_twice_the_size(run_path, tmp_path, capsys):
    small = ["--epochs", "1", "--batch-size", "8", "--train-size", "16", "--test-size", "8", "--device", "cpu",
             "--no-progress", "--image-size", "32"]
    out = tmp_path / "out"
    assert main(["leverage", "probe", str(run_path), "--kind", "linear", *small, "--out", str(out / "p.json")]) == 0
    assert main(["leverage", "finetune", str(run_path), "--protocol", "predictor", "--protocol", "random_predictor",
                 *small, "--out", str(out / "f.json")]) == 0
    seg = make_seg_folder(tmp_path / "seg")
    assert main(["leverage", "segment", str(run_path), "--seg-data", str(seg), "--source", "predictor",
                 *small, "--out", str(out / "s.json")]) == 0
    assert json.loads((out / "s.json").read_text())["rows"][0]["settings"]["image_size"] == 32
    assert main(["eval", "knn", str(run_path), "eval.knn_train=16", "eval.knn_test=8", "--image-size", "32",
                 "--out", str(out / "k.json")]) == 0
    assert json.loads((out / "k.json").read_text())["image_size"] == 32
    assert main(["leverage", "probe", str(run_path), *small[:-1], "30"]) == 2
    assert "not a multiple of the patch size" in capsys.readouterr().err
