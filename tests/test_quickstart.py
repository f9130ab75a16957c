"""The README's quickstart, copied as a reader would: a pooled embedding of a shipped model from
its Python block, a training on a folder of images from its shell block, the install it names;
and every link of the README and of docs/ reaches a page and a heading that exist."""

import json
import re
import shlex
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
pytestmark = pytest.mark.usefixtures("one_thread")


def _section(heading: str) -> str:
    """The README's text under ``## heading``, up to the next section."""
    text = README.read_text()
    part = text[text.index(f"\n## {heading}\n"):]
    return part[:part.find("\n## ", 1)]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def _commands(block: str) -> list[list[str]]:
    """The shell block's commands as the shell splits them (continued lines joined, comments dropped)."""
    return [words for line in block.replace("\\\n", " ").splitlines() if (words := shlex.split(line, comments=True))]


def test_the_quickstart_gives_a_pooled_embedding_of_a_shipped_model():
    code = _blocks(_section("Quickstart"), "python")[0]
    assert 'iwm.pretrained("' in code  # the weights inside the package: no network, no run of one's own
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), scope)
    said = re.search(r"^z = .*# \(([\d, ]+)\)", code, re.M)
    assert said, "the block states the embedding's shape"
    assert tuple(scope["z"].shape) == tuple(int(n) for n in said.group(1).split(", "))


def test_an_embedding_is_the_pooled_feature_that_knn_reads():
    import iwm
    from iwm.eval.features import extract

    run = iwm.pretrained("cifar10_equi")
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    z, z_context, z_float = run.embed(images), run.embed(images, target=False), run.embed(images.float() / 255)
    feats, _ = extract(run.target_encoder, torch.utils.data.TensorDataset(images, torch.zeros(6, dtype=torch.long)))
    torch.testing.assert_close(z, feats)
    torch.testing.assert_close(z_float, feats)  # float in [0, 1] reads the same
    assert z_context.shape == feats.shape and not torch.allclose(z_context, feats)  # target=False: the context encoder


def _photos(root: Path, size: int = 16) -> Path:
    """train/<class>/ beside val/<class>/, as the quickstart describes, of small random images."""
    g = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for label in ("cats", "dogs"):
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = g.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.jpg")
    return root


def test_the_quickstart_trains_on_a_folder_and_evaluates_it_as_written(tmp_path, capsys):
    from conftest import TINY
    from iwm.cli import build_parser, main, parse_args

    commands = _commands(_blocks(_section("Quickstart"), "bash")[0])
    assert all(c[0] == "iwm" for c in commands)
    for words in commands:  # every command parses as written
        parse_args(build_parser(), words[1:])
    pretrain = next(c[1:] for c in commands if c[1] == "pretrain")
    evaluate = next(c[1:] for c in commands if c[1:3] == ["eval", "knn"] and "runs/photos" in c)
    assert "data.dataset=folder" in pretrain and "data.path=/data/photos" in pretrain
    assert "run.out_dir=runs/photos" in pretrain

    # the same commands on a small folder, a tiny model and two steps (the sizes a test can afford)
    photos, out = _photos(tmp_path / "photos"), tmp_path / "runs" / "photos"

    def here(words):
        return [w.replace("/data/photos", str(photos)).replace("runs/photos", str(out)) for w in words]

    tiny = [o for o in TINY if not o.startswith(("data.dataset=", "data.synthetic_size="))]
    tiny += [f"data.cache_dir={tmp_path / 'cache'}"]
    assert main([*here(pretrain), *tiny, "optim.max_steps=2"]) == 0
    assert (out / "checkpoints" / "latest.pt").is_file()
    capsys.readouterr()
    assert main([*here(evaluate), "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["top1"] <= 1 and res["test"] == 8  # scored on the val/ split


def test_the_install_names_the_pins_the_project_uses():
    section = _section("Install as a library")
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name in ("torch", "torchvision"):
        assert f"{name}=={pins[name]}" in section, f"the README's install does not name {name}=={pins[name]}"
    bounds = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for bound in bounds:
        if bound.startswith(("torch>", "torchvision>")):
            assert f"`{bound}`" in section
    assert "pip install -e ." in section


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_link_reaches_a_page_and_heading_that_exist(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", _prose(dest.read_text()), re.M)
            if anchor not in {_slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{page.name} links to what is not there: {broken}"


def test_anchors_are_made_as_github_makes_them():
    assert _slug("Other weights, and sharing yours") == "other-weights-and-sharing-yours"
    assert _slug("Is my run healthy?") == "is-my-run-healthy"
    assert _slug("Several GPUs, and clusters") == "several-gpus-and-clusters"
