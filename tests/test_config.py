import re

import pytest

from iwm import config
from iwm.config import resolve_config
from iwm.config import ConfigError


def test_shipped_configs_load():
    for name in ("cifar10_equi", "cifar10_inv", "cifar10_ijepa", "imagenet_vitb16"):
        cfg = config.load(resolve_config(name))
        assert cfg.data.image_size % cfg.model.patch_size == 0
    assert config.load(resolve_config("cifar10_ijepa")).aug.strength == 0.0
    inv, equi = config.load(resolve_config("cifar10_inv")), config.load(resolve_config("cifar10_equi"))
    assert inv.predictor.depth < equi.predictor.depth


def test_overrides_are_typed(tmp_path):
    cfg = config.from_dict(None, ["optim.lr=5e-4", "data.crop_scale=[0.5, 1.0]", "run.progress=false",
                                  "predictor.conditioning=sequence"])
    assert cfg.optim.lr == 5e-4 and cfg.data.crop_scale == (0.5, 1.0)
    assert cfg.run.progress is False and cfg.predictor.conditioning == "sequence"
    path = tmp_path / "c.yaml"
    config.save(cfg, path)
    assert config.load(path) == cfg


@pytest.mark.parametrize("override,key", [
    ("optim.lrr=1", "optim.lrr"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.lr=-1", "optim.lr"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.batch_size=1.5", "data.batch_size"),
    ("predictor.conditioning=token", "predictor.conditioning"),
    ("model.patch_size=5", "model.patch_size"),
    ("aug.grayscale_prob=1.5", "aug.grayscale_prob"),
    ("mask.num_targets=8", "mask.num_targets"),
    ("run.device=tpu", "run.device"),
    ("eval.every=-1", "eval.every"),
    ("eval.health_loss_batch=1000", "eval.health_loss_batch"),
    ("eval.health_mrr_bank=1", "eval.health_mrr_bank"),
    ("eval.collapse_std=-0.1", "eval.collapse_std"),
    ("nosection.x=1", "nosection"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        config.from_dict(None, [override])
    assert str(err.value).startswith(key)


def test_conditioning_error_lists_choices():
    with pytest.raises(ConfigError, match="none, sequence, feature"):
        config.from_dict(None, ["predictor.conditioning=token"])


def test_unknown_shipped_config():
    with pytest.raises(ConfigError, match="cifar10_equi"):
        resolve_config("nope")


def test_shipped_configs_say_where_each_augmentation_value_comes_from():
    import yaml

    from iwm.config import SHIPPED

    for path in sorted(SHIPPED.glob("*.yaml")):
        lines = path.read_text().splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("aug:")), None)
        if start is None:  # a variant that changes no augmentation: its base's values, checked there
            assert any(line.startswith("base:") for line in lines), path.name
            continue
        body = []
        for line in lines[start + 1:]:
            if not line.startswith(" "):
                break
            body.append(line)
        keys = [line for line in body if line.strip() and not line.strip().startswith("#")]
        undocumented = [line.split(":")[0].strip() for line in keys if "#" not in line]
        assert not undocumented, (path.name, undocumented)
        aug = yaml.safe_load(path.read_text())["aug"]
        if "saturation" in aug:  # the paper's reported values, or a stated multiple of them
            assert aug.get("solarize_prob", 0.1) == 0.1, path.name
            for key, paper in {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}.items():
                said = next(line for line in body if line.strip().startswith(f"{key}:"))
                scaled = re.search(r"(twice|[\d.]+x) the paper's ([\d.]+)", said)
                factor = 1.0 if scaled is None else 2.0 if scaled[1] == "twice" else float(scaled[1][:-1])
                if scaled is not None:
                    assert float(scaled[2]) == paper, (path.name, key, "quotes the wrong paper value")
                assert aug[key] == pytest.approx(paper * factor), (path.name, key, aug[key], factor)


def test_a_config_with_a_base_states_only_what_it_changes(tmp_path):
    from iwm.config import load

    (tmp_path / "parent.yaml").write_text("base: cifar10_equi\noptim:\n  lr: 0.002\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: parent.yaml\npredictor:\n  depth: 6\n")
    cfg, equi = load(child), load(resolve_config("cifar10_equi"))
    assert (cfg.predictor.depth, cfg.optim.lr) == (6, 0.002)
    assert cfg.predictor.width == equi.predictor.width and cfg.aug == equi.aug  # the rest is inherited
    assert load(child, ["optim.lr=0.003"]).optim.lr == 0.003  # overrides still win

    (tmp_path / "parent.yaml").write_text("base: child.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load(child)
    child.write_text("base: [cifar10_equi]\n")
    with pytest.raises(ConfigError, match="base: in .* must name a shipped config"):
        load(child)
    child.write_text("base: nope\n")
    with pytest.raises(ConfigError, match="no shipped config of that name"):
        load(child)
