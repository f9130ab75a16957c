import hashlib
import pickle
import zipfile

import pytest
import torch

import iwm
from iwm import config
from iwm.checkpoint import CheckpointError, atomic_save, load_checkpoint, save_checkpoint, sidecar
from iwm.train import Trainer


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_tampered_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": _Evil()}, path)
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(path)
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "raw.pt")


def test_rotation_keeps_latest_and_newest_periodic(tmp_path):
    for step in range(1, 6):
        save_checkpoint({"step": step}, tmp_path, step, keep=2, periodic=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["latest.pt", "latest.pt.json", "step-00000004.pt", "step-00000004.pt.json",
                     "step-00000005.pt", "step-00000005.pt.json"]
    assert load_checkpoint(tmp_path / "latest.pt")["step"] == 5
    assert load_checkpoint(tmp_path / "step-00000004.pt")["step"] == 4


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    atomic_save({"step": 1}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


def test_other_architecture_is_refused_with_shapes(tmp_path, tiny_overrides):
    cfg = config.from_dict(None, tiny_overrides + ["optim.max_steps=1"])
    Trainer(cfg).fit()
    wider = config.from_dict(None, tiny_overrides + ["optim.max_steps=2", "predictor.width=64"])
    with pytest.raises(ValueError, match=r"shape .*checkpoint \(.*32.*\) vs model \(.*64"):
        Trainer(wider).fit()


def test_load_api_and_export(tmp_path, tiny_overrides):
    from safetensors.torch import load_file

    cfg = config.from_dict(None, tiny_overrides + ["optim.max_steps=2"])
    Trainer(cfg).fit()
    run = iwm.load(cfg.run.out_dir)
    assert run.step == 2
    imgs = torch.rand(2, 3, 16, 16)
    tokens = run.encode(imgs)
    assert tokens.shape == (2, 16, 32)
    x, params = run.corrupt(imgs, seed=1)
    assert torch.equal(run.actions.apply(imgs, params), x)  # the source view is replayable from its parameters
    action = run.actions.encode(params, run.actions.identity(2))  # a_x->y to the untouched image
    assert action.shape == (2, run.actions.dim) == (2, run.predictor.action_dim)
    ctx_idx = torch.arange(8).repeat(2, 1)
    pred = run.predict(run.encode(x, target=False, keep=ctx_idx), ctx_idx, torch.tensor([[9, 10]] * 2), action)
    assert pred.shape == (2, 2, 32)
    folder = run.save_pretrained(tmp_path / "w")
    weights = load_file(str(folder / "encoder.safetensors"))
    assert torch.equal(weights["patch_embed.proj.weight"], run.encoder.patch_embed.proj.weight)


def _flip_inside(path, tensor, offset=100):
    """Flip one byte of ``tensor``'s storage inside the saved file (found by its bytes)."""
    data = bytearray(path.read_bytes())
    at = data.find(tensor.numpy().tobytes())
    assert at > 0 and data.find(tensor.numpy().tobytes(), at + 1) < 0
    data[at + offset] ^= 0x01
    path.write_bytes(bytes(data))


def _state(step):
    g = torch.Generator().manual_seed(step)
    return {"step": step, "model": {"w": torch.randn(64, generator=g)},
            "optimizer": {"state": {"w": {"exp_avg": torch.randn(64, generator=g),
                                          "exp_avg_sq": torch.rand(256, generator=g)}}}}


def test_a_damaged_tensor_is_caught_when_the_checksum_file_is_lost(tmp_path):
    state = _state(3)
    latest = save_checkpoint(state, tmp_path, 3, keep=2, periodic=False)
    sidecar(latest).unlink()
    assert load_checkpoint(latest)["step"] == 3  # sound: verified by the sha256 it carries
    _flip_inside(latest, state["optimizer"]["state"]["w"]["exp_avg_sq"])
    assert torch.load(latest, weights_only=True)["step"] == 3  # torch.load alone does not notice
    with pytest.raises(CheckpointError, match="damaged: its sha256 differs from the one it carries"):
        load_checkpoint(latest)


def test_the_sha256_inside_is_the_archive_comment_and_its_damage_is_caught(tmp_path):
    latest = save_checkpoint(_state(1), tmp_path, 1, keep=2, periodic=False)
    sidecar(latest).unlink()
    comment = zipfile.ZipFile(latest).comment  # a zip comment: every zip reader skips it
    data = latest.read_bytes()
    assert comment == b"iwm-sha256:" + hashlib.sha256(data[:-len(comment) - 2]).hexdigest().encode()
    damaged = bytearray(data)
    damaged[-len(comment)] ^= 0x01  # in the comment's prefix: the checksum itself is damaged
    latest.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="the sha256 it carries at its end is damaged"):
        load_checkpoint(latest)


def test_a_checkpoint_without_any_checksum_is_judged_by_loading(tmp_path):
    path = tmp_path / "old.pt"
    torch.save(_state(2), path)  # as written before checkpoints carried a sha256
    assert load_checkpoint(path)["step"] == 2
