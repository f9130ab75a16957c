import pickle

import pytest
import torch

import iwm
from iwm import config
from iwm.checkpoint import atomic_save, load_checkpoint, save_checkpoint
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
    assert names == ["latest.pt", "step-00000004.pt", "step-00000005.pt"]
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
    ctx_idx = torch.arange(8).repeat(2, 1)
    pred = run.predict(run.encode(x, target=False, keep=ctx_idx), ctx_idx, torch.tensor([[9, 10]] * 2),
                       params.action())
    assert pred.shape == (2, 2, 32)
    folder = run.save_pretrained(tmp_path / "w")
    weights = load_file(str(folder / "encoder.safetensors"))
    assert torch.equal(weights["patch_embed.proj.weight"], run.encoder.patch_embed.proj.weight)
