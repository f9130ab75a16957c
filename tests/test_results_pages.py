"""The results pages (docs/results/*.md) read on their own: no issue numbers or paths into this
project's shared folder, every MRR column names its protocol, and code with uncommitted changes
is said to be so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iwm.studies.page import code_note, describe_data, provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGES = sorted(RESULTS.glob("*.md"))

ISSUE = re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE)
SHARED = re.compile(r"\.\./shared|/work/shared")
PROTOCOL = re.compile(r"clean source|clean image as the source|clean image is the source|paper's protocol|"
                      r"augmented source|source transformed as in training", re.IGNORECASE)


def tables(text: str) -> list[tuple[list[str], str]]:
    """Each markdown table of ``text``: its header cells and the paragraph right before it."""
    lines, found = text.splitlines(), []
    for i, line in enumerate(lines):
        if not (line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---")):
            continue
        if i and lines[i - 1].startswith("|"):
            continue  # a rule inside a table, not a header
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        lead = []
        while j >= 0 and lines[j].strip() and not lines[j].startswith("|"):
            lead.insert(0, lines[j])
            j -= 1
        found.append(([c.strip() for c in line.strip().strip("|").split("|")], " ".join(lead)))
    return found


def test_the_pages_are_found():
    assert {"leverage.md", "recipe.md", "reference_models.md", "world_model.md", "demo.md"} <= {p.name for p in PAGES}


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_no_page_names_an_issue_number(page):
    assert not ISSUE.findall(page.read_text()), f"{page.name} names an issue: say what it was instead"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_points_into_the_shared_folder(page):
    assert not SHARED.findall(page.read_text()), f"{page.name} has a path a reader cannot follow"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_mrr_column_names_its_protocol(page):
    unnamed = [(cell, lead[:80]) for header, lead in tables(page.read_text()) for cell in header
               if "MRR" in cell and not PROTOCOL.search(cell) and not PROTOCOL.search(lead)]
    assert not unnamed, f"{page.name}: MRR columns without a protocol in the header or the line before: {unnamed}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_code_with_uncommitted_changes_is_said_to_be_so(page):
    text = page.read_text()
    assert "-dirty" not in text or "uncommitted" in text


def test_the_protocol_check_reads_a_header_or_the_line_before():
    named = "MRR by the paper's protocol (the clean image as the source):\n\n| run | learned MRR |\n|---|---|\n"
    unnamed = "Some numbers.\n\n| run | MRR |\n|---|---|\n| a | 0.1 |\n"
    assert tables(named) == [(["run", "learned MRR"], "MRR by the paper's protocol (the clean image as the source):")]
    assert PROTOCOL.search(tables(named)[0][1]) and not PROTOCOL.search(tables(unnamed)[0][1])


def test_a_page_header_names_the_data_and_says_when_code_was_not_one_clean_commit():
    study = {"device": "cpu", "date": "today", "code": "git abc1234-dirty", "command": "iwm study x",
             "data": describe_data("cifar10", "/somewhere/cifar10-jpg.tar.gz")}
    lines = provenance(study)
    assert "- data: CIFAR-10, our JPEG copy at quality 75 (`cifar10-jpg.tar.gz`; its pixels differ slightly from " \
           "the standard files')" in lines
    assert any(line.startswith("- code: git abc1234-dirty (uncommitted changes, not reproducible") for line in lines)
    assert describe_data("cifar10", "/x/cifar-10-python.tar.gz") == \
        "CIFAR-10, the standard files (`cifar-10-python.tar.gz`)"
    assert code_note(["git abc1234"]) == ""
    assert code_note(["git a", "git b-dirty", "git a"]).startswith("stitched from 2 code versions, not one commit's "
                                                                   "results; 1 of them with uncommitted changes")
