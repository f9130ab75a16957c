"""The examples of the README and of the docs/ pages it links do what they say, for a user who
cloned only the repository."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
pytestmark = pytest.mark.usefixtures("one_thread")


def _block(heading: str, lang: str = "python", page: Path = README) -> str:
    """The first ``lang`` code block after ``heading`` on ``page``."""
    text = page.read_text()
    part = text[text.index(heading):]
    return re.search(rf"```{lang}\n(.*?)```", part, re.S).group(1)


def test_the_python_api_example_gives_the_shapes_its_comments_state():
    code = _block("## Python API", page=DOCS / "interop.md")
    code = code.replace('"runs/demo"', '"pretrained:cifar10_equi"')  # the demo's encoder, trained long
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), scope)
    said = {name: tuple(int(n) for n in shape.split(", ")) for name, shape in
            re.findall(r"^(\w+) = .*# \(([\d, ]+)\)", code, re.M)}
    assert set(said) >= {"tokens", "pooled", "pred"}
    for name, shape in said.items():
        value = scope[name]
        assert tuple(value.shape) == shape, f"README says {name} is {shape}, it is {tuple(value.shape)}"


def test_the_timm_example_names_the_demo_runs_sizes():
    from iwm import config
    from iwm.config import encoder_dims, resolve_config
    from iwm.demo import DEMO_CONFIG

    code = _block("**timm.**", page=DOCS / "interop.md")
    cfg = config.load(resolve_config(DEMO_CONFIG))
    dim, depth, heads = encoder_dims(cfg.model)
    assert f"embed_dim={dim}, depth={depth}, num_heads={heads}" in code
    assert f"img_size={cfg.data.image_size}, patch_size={cfg.model.patch_size}" in code


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_the_readme_and_docs_name_nothing_a_user_does_not_have(page):
    # ../shared exists beside the project's own checkouts only
    assert "../shared" not in page.read_text() and "/work/" not in page.read_text()


def test_the_readme_quotes_the_reference_summary_as_the_page_has_it():
    """Figures in the README come from the results page that measured them, never restated."""
    import json

    from iwm.studies.page import marked
    from iwm.studies.reference import README_QUOTE, SUMMARY, summary_table

    results = README.parent / "docs" / "results"
    page = (results / "reference_models.md").read_text()
    quote, summary = marked(README.read_text(), *README_QUOTE), marked(page, *SUMMARY)
    assert summary and quote == summary
    assert summary == summary_table(json.loads((results / "reference_models.json").read_text()))


def test_the_reference_study_refreshes_the_readme_quote_and_nothing_around_it(tmp_path):
    from iwm.studies.reference import README_QUOTE, quote_in_readme

    study = {"models": {"cifar10_equi": {"trained": {"knn": {"top1": 0.5}, "mrr": {"mrr": 0.1}}, "train_hours": 2.0}},
             "pixels": {"knn": {"top1": 0.39}}}
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_QUOTE[0]}\nold table\n{README_QUOTE[1]}\noutro\n")
    assert quote_in_readme(study, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert "| `cifar10_equi` | 50.00 % |" in text and "| 0.1000 |" in text and "| raw pixels | 39.00 % |" in text
    plain = tmp_path / "OTHER.md"
    plain.write_text("no quote here\n")
    assert not quote_in_readme(study, plain) and plain.read_text() == "no quote here\n"


def test_the_readme_quotes_the_demo_table_as_the_demo_wrote_it():
    import json

    from iwm.demo import PAGE_TABLE, README_QUOTE, demo_table
    from iwm.studies.page import marked

    results = README.parent / "docs" / "results"
    page = (results / "demo.md").read_text()
    quote, written = marked(README.read_text(), *README_QUOTE), marked(page, *PAGE_TABLE)
    assert written and quote == written == demo_table(json.loads((results / "demo.json").read_text()))


def test_the_user_family_example_trains_and_its_family_is_reported(tmp_path):
    import json

    import iwm
    from conftest import TINY
    from iwm.eval.mrr import compute_mrr

    code = _block("**Your own family**", page=DOCS / "world_models.md")
    out = tmp_path / "posterize"
    tiny = ", ".join(repr(o) for o in [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "optim.max_steps=2"])
    assert '"run.out_dir=runs/posterize"]' in code
    code = code.replace('"run.out_dir=runs/posterize"]', f'"run.out_dir={out}", {tiny}]')
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    health = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "loss_posterize" in [r for r in health if r.get("kind") == "health"][-1]
    res = compute_mrr(iwm.load(out), num_images=2, bank_size=4, source="augmented")
    assert "posterize" in res["families"]
    p = iwm.load(out).actions
    assert p.names[-1] == "posterize" and p.dim == 8
