"""Shipped models: iwm ship -> manifest + fp16 folder -> iwm.pretrained / pretrained:NAME / torch.hub."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import iwm
from conftest import train_tiny
from iwm import registry
from iwm.cli import main

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    run = train_tiny(tmp_path_factory.mktemp("registry"))
    (run / "mrr.json").write_text(json.dumps({"source": "clean", "mrr": 0.25, "families": {}}))
    return run


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """A registry of its own for the test, in place of the package's iwm/weights."""
    monkeypatch.setenv(registry.ROOT_ENV, str(tmp_path / "weights"))
    return tmp_path / "weights"


def test_the_package_manifest_is_valid_and_ships_what_it_lists():
    assert registry.PACKAGE_WEIGHTS.joinpath(registry.MANIFEST).is_file()
    for name in registry.shipped_names(registry.PACKAGE_WEIGHTS):
        assert registry.shipped_folder(name, registry.PACKAGE_WEIGHTS).is_dir()


def test_the_models_the_package_ships_load_through_torch_hub_and_encode(monkeypatch):
    monkeypatch.delenv(registry.ROOT_ENV, raising=False)
    shipped = registry.manifest()["models"]
    assert set(shipped) <= set(registry.REFERENCE_MODELS)  # each has its torch.hub entry
    for name, entry in shipped.items():
        run = torch.hub.load(str(REPO), name, source="local")
        assert isinstance(run, iwm.Run) and run.step == entry["step"]
        assert next(run.target_encoder.parameters()).dtype == torch.float32  # fp16 on disk, fp32 loaded
        size = run.config.data.image_size
        tokens = run.encode(torch.rand(2, 3, size, size))
        assert tokens.shape[0] == 2 and torch.isfinite(tokens).all()
        assert entry["scores"]["knn_top1"] > 0 and entry["dtype"] == "float16"


def test_ship_then_pretrained_returns_the_run_in_fp32(run_path, weights_dir, capsys):
    assert main(["ship", str(run_path), "cifar10_equi"]) == 0
    assert "shipped cifar10_equi" in capsys.readouterr().out
    entry = registry.manifest()["models"]["cifar10_equi"]
    assert set(entry["files"]) == {"config.json", "encoder.safetensors", "target_encoder.safetensors",
                                   "predictor.safetensors"}
    assert entry["scores"] == {"mrr": 0.25} and entry["step"] == 2 and entry["dtype"] == "float16"
    assert entry["commit"] and entry["config"]["model"]["embed_dim"] == 32
    run, original = iwm.pretrained("cifar10_equi"), iwm.load(run_path)
    assert isinstance(run, iwm.Run) and run.encoder.pos_embed.dtype == torch.float32
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(run.encode(x), original.encode(x), atol=1e-2)
    assert run.out_dir == Path("runs/pretrained/cifar10_equi")  # results never go into the package


def test_pretrained_name_works_where_the_cli_takes_a_run(run_path, weights_dir, tmp_path, capsys):
    registry.ship(iwm.load(run_path), "tiny")
    assert main(["eval", "knn", "pretrained:tiny", "eval.knn_train=16", "eval.knn_test=8",
                 "--out", str(tmp_path / "knn.json")]) == 0
    assert json.loads((tmp_path / "knn.json").read_text())["bank"] == 16
    assert main(["leverage", "probe", "pretrained:tiny", "--kind", "knn", "--train-size", "16", "--test-size", "8",
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "probe.json")]) == 0
    assert main(["eval", "knn", "pretrained:nope"]) == 2
    assert "pretrained:nope: no shipped model of that name (shipped: tiny)" in capsys.readouterr().err


def test_an_unshipped_name_lists_the_shipped_ones(weights_dir):
    with pytest.raises(FileNotFoundError, match=r"pretrained:cifar10_equi: .*\(shipped: none yet\)"):
        iwm.pretrained("cifar10_equi")


def test_a_changed_file_fails_the_checksum(run_path, weights_dir, capsys):
    registry.ship(iwm.load(run_path), "tiny")
    f = weights_dir / "tiny" / "predictor.safetensors"
    f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\0")
    assert main(["eval", "knn", "pretrained:tiny"]) == 2
    assert "does not match the manifest's sha256" in capsys.readouterr().err


def test_torch_hub_loads_the_shipped_models_and_runs(run_path, weights_dir):
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert all(callable(getattr(hubconf, name, None)) for name in registry.REFERENCE_MODELS)
    registry.ship(iwm.load(run_path), "cifar10_equi")
    run = torch.hub.load(str(REPO), "cifar10_equi", source="local")
    assert isinstance(run, iwm.Run) and run.step == 2
    other = torch.hub.load(str(REPO), "run", str(run_path), source="local", image_size=32)
    assert other.config.data.image_size == 32
    with pytest.raises(FileNotFoundError, match="cifar10_inv"):
        torch.hub.load(str(REPO), "cifar10_inv", source="local")
