"""Inputs a user gets wrong, each answered with one line and exit status 2, not a traceback:
action families that fail, paths and sizes that cannot work, eval and study arguments out of
range; and metrics.jsonl stays strict JSON when a loss is not finite."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from iwm import config
from iwm.cli import main
from iwm.train import Trainer

FAMILIES = '''
import torch
from iwm.actions import ActionFamily


class Shift(ActionFamily):
    values, views = ("amount",), "source"

    def sample(self, batch, generator, view, always=False):
        return {"amount": torch.rand(batch, generator=generator)}

    def identity(self, batch, device="cpu"):
        return {"amount": torch.zeros(batch, device=device)}

    def apply(self, images, params):
        return images

    def encode(self, source, target):
        return (target["amount"] - source["amount"])[:, None]


class RaisesInSample(Shift):
    name = "raises_in_sample"

    def sample(self, batch, generator, view, always=False):
        raise RuntimeError("no parameters today")


class RaisesInApply(Shift):
    name = "raises_in_apply"

    def apply(self, images, params):
        return images * params["strength"]


class WideEncode(Shift):
    name = "wide_encode"

    def encode(self, source, target):
        return torch.zeros(len(source["amount"]), 3)


class OneChannel(Shift):
    name = "one_channel"

    def apply(self, images, params):
        return images.mean(1, keepdim=True)
'''


def _said(capsys):
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith("iwm:")], err


@pytest.fixture
def families_here(tmp_path, monkeypatch):
    """The working directory holds the user's families (module:Class resolves there)."""
    (tmp_path / "my_families.py").write_text(FAMILIES)
    (tmp_path / "divides_by_zero.py").write_text("RATE = 1 / 0\n")
    (tmp_path / "bad_syntax.py").write_text("def sample(:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    # another test's my_families (a module of the same name, elsewhere) may be imported already
    for name in ("my_families", "divides_by_zero", "bad_syntax"):
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize("family,said", [
    ("divides_by_zero:Fam", "aug.families: building divides_by_zero:Fam raised ZeroDivisionError: division by zero"),
    ("bad_syntax:Fam", "aug.families: building bad_syntax:Fam raised SyntaxError: invalid syntax "
                       "(bad_syntax.py, line 1)"),
    ("my_families:RaisesInSample", "aug.families: raises_in_sample.sample raised RuntimeError: no parameters today"),
    ("my_families:RaisesInApply", "aug.families: raises_in_apply.apply raised KeyError: 'strength'"),
    ("my_families:WideEncode", "aug.families: wide_encode.encode returned a tensor of shape (2, 3); it must be "
                               "(B, 1), one number for each of its values (amount)"),
    ("my_families:OneChannel", "aug.families: one_channel.apply returned a tensor of shape (2, 1, 16, 16) for images "
                               "of (2, 3, 16, 16); it must return the images' shape (B, 3, H, W)"),
])
def test_a_family_that_fails_is_one_line_naming_it(tiny_overrides, families_here, capsys, family, said):
    status = main(["pretrain", *tiny_overrides, f"aug.families=[jitter,{family}]", "optim.max_steps=1"])
    lines, err = _said(capsys)
    assert status == 2 and "Traceback" not in err
    assert lines == [f"iwm: error: {said}"]


@pytest.mark.parametrize("with_config", [False, True])
def test_a_run_folder_name_too_long_is_one_line(tmp_path, tiny_overrides, capsys, with_config):
    args = [o for o in tiny_overrides if not o.startswith("run.out_dir")] + [f"run.out_dir={tmp_path / ('r' * 300)}"]
    status = main(["pretrain", *(["--config", "cifar10_equi"] if with_config else []), *args])
    lines, _ = _said(capsys)
    assert status == 2 and len(lines) == 1
    assert lines[0].startswith("iwm: error: ") and ("longer than the filesystem allows" in lines[0]
                                                    or "run.out_dir: a folder name of 300 bytes" in lines[0])


def test_fewer_images_than_a_batch_is_one_line(tmp_path, tiny_overrides, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(48):
        Image.fromarray(np.full((16, 16, 3), i, np.uint8)).save(folder / f"{i:02d}.png")
    status = main(["pretrain", *tiny_overrides, "data.dataset=folder", f"data.path={folder}", "data.batch_size=100"])
    lines, _ = _said(capsys)
    assert status == 2
    assert lines == ["iwm: error: data.batch_size: 48 images cannot fill one global batch of 100; "
                     "lower data.batch_size"]


def test_a_subset_larger_than_the_data_is_refused(tiny_overrides, capsys):
    status = main(["pretrain", *tiny_overrides, "data.subset=1000", "optim.max_steps=1"])
    lines, _ = _said(capsys)
    assert status == 2
    assert lines == ["iwm: error: data.subset: 1000 images asked for, but the data set has 64; lower it, or 0 for "
                     "all of them"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import train_tiny

    return train_tiny(tmp_path_factory.mktemp("mrr"), steps=1)


@pytest.mark.parametrize("strength,rule", [("nan", "must be >= 0"), ("-1", "must be >= 0"),
                                           ("5", "strength x brightness/contrast/saturation must stay below 1")])
def test_mrr_refuses_a_strength_pretraining_refuses(tiny_run, capsys, strength, rule):
    status = main(["eval", "mrr", str(tiny_run), f"--strength={strength}", "--images=2", "--bank=4", "--no-progress"])
    lines, err = _said(capsys)
    assert status == 2 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"iwm: error: --strength {strength}: aug.strength: ")
    assert rule in lines[0]


@pytest.mark.parametrize("held,said", [("[1, 2, 3]", "holds a JSON list, not the object a study stores"),
                                       ('{"models": {"a": ', "is not valid JSON")])
def test_a_damaged_study_store_is_one_line_naming_it(tmp_path, capsys, held, said):
    store = tmp_path / "reference.json"
    store.write_text(held)
    status = main(["study", "reference", "--runs-dir", str(tmp_path), "--no-page"])
    lines, _ = _said(capsys)
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith(f"iwm: error: {store} {said}")


def test_metrics_write_null_for_a_loss_that_is_not_finite(tiny_overrides):
    t = Trainer(config.from_dict(None, tiny_overrides + ["optim.max_steps=3", "eval.every=0"]))
    forward = t.model.forward
    # step 2's loss
    t.model.forward = lambda *a, **k: forward(*a, **k) * float("nan") if t.step == 1 else forward(*a, **k)
    t.fit()

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    rows = [json.loads(line, parse_constant=strict) for line in (t.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] is None for r in rows if r["kind"] == "train"] == [False, True, False]
