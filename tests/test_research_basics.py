"""What a researcher looks for before adopting the library: a licence, a citation, the
repository's address, and a README (and training page) that says how long the shipped config trains."""

import re
import tomllib
from pathlib import Path

import yaml

from iwm import __version__, config

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CITATION = yaml.safe_load((ROOT / "CITATION.cff").read_text())
README = (ROOT / "README.md").read_text()
TRAINING = (ROOT / "docs" / "training.md").read_text()


def test_the_license_file_is_the_licence_pyproject_declares():
    assert PYPROJECT["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert CITATION["license"] == "MIT"


def test_the_citation_names_this_version_and_the_paper():
    assert CITATION["cff-version"] == "1.2.0" and CITATION["version"] == __version__ == PYPROJECT["version"]
    paper = CITATION["preferred-citation"]
    assert [a["family-names"] for a in paper["authors"]] == ["Garrido", "Assran", "Ballas", "Bardes", "Najman",
                                                             "LeCun"]
    assert paper["identifiers"] == [{"type": "other", "value": "arXiv:2403.00504"}]


def test_the_readme_cites_both_in_bibtex_at_its_end():
    cite = README[README.index("## Cite"):]
    assert "arXiv:2403.00504" in cite and f"version = {{{__version__}}}" in cite
    assert CITATION["repository-code"] in cite


def test_the_package_metadata_names_the_repository():
    assert PYPROJECT["urls"]["Repository"] == CITATION["repository-code"]


def test_the_readme_says_how_many_epochs_the_shipped_config_trains():
    epochs = config.load(config.resolve_config("cifar10_equi")).optim.epochs
    line = next(x for x in TRAINING.splitlines() if x.startswith("iwm pretrain --config cifar10_equi  "))
    assert line.endswith(f"# shipped config by name: {epochs} epochs")
    for page in (README, TRAINING):
        assert re.search(rf"config trains its own `optim.epochs: {epochs}`", page)
