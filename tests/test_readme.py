"""The README's examples do what they say, for a user who cloned only the repository."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"
pytestmark = pytest.mark.usefixtures("one_thread")


def _block(heading: str, lang: str = "python") -> str:
    text = README.read_text()
    part = text[text.index(heading):]
    return re.search(rf"```{lang}\n(.*?)```", part, re.S).group(1)


def test_the_python_api_example_gives_the_shapes_its_comments_state():
    code = _block("## Python API").replace('"runs/demo"', '"pretrained:cifar10_equi"')  # the demo's config
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), scope)
    said = {name: tuple(int(n) for n in shape.split(", ")) for name, shape in
            re.findall(r"^(\w+) = .*# \(([\d, ]+)\)", code, re.M)}
    assert set(said) >= {"tokens", "pred"}
    for name, shape in said.items():
        value = scope[name]
        assert tuple(value.shape) == shape, f"README says {name} is {shape}, it is {tuple(value.shape)}"


def test_the_timm_example_names_the_demo_runs_sizes():
    from iwm import config
    from iwm.config import SHIPPED, encoder_dims

    code = _block("**timm.**")
    cfg = config.load(SHIPPED / "cifar10_equi.yaml")
    dim, depth, heads = encoder_dims(cfg.model)
    assert f"embed_dim={dim}, depth={depth}, num_heads={heads}" in code
    assert f"img_size={cfg.data.image_size}, patch_size={cfg.model.patch_size}" in code


def test_the_readme_names_nothing_a_user_does_not_have():
    # ../shared exists beside the project's own checkouts only
    assert "../shared" not in README.read_text() and "/work/" not in README.read_text()
