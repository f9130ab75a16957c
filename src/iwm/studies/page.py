"""What every study page shares: the lines saying what produced it, markdown tables, and writing
the page with its raw numbers beside it. A study measures into a dict; its page is built from
that dict with these, so a page is re-rendered from its JSON alone."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..downstream.report import write_json
from ..files import write_text

VERDICT = "<!-- verdict: fill in after reading the numbers -->"  # left for whoever reads the numbers
RAW_NUMBERS = "- raw numbers: the .json file of the same name beside this page"


def provenance(study: dict) -> list[str]:
    """The bullets every page opens with: where, when, on which data, by which code and command it
    was measured."""
    code = study.get("code", "not recorded")
    note = code_note([code])
    return [f"- device: {study['device']}", f"- date: {study['date']}",
            *([f"- data: {study['data']}"] if study.get("data") else []),
            f"- code: {code}" + (f" ({note})" if note else ""), f"- command: `{study['command']}`"]


def code_note(codes: Sequence[str]) -> str:
    """What a reader must know about the code versions behind a page's numbers, in plain words: a
    page stitched from several commits, or measured on a tree with uncommitted changes (git's
    ``-dirty``), says so; one clean commit needs no note ("")."""
    codes = list(dict.fromkeys(codes))
    dirty = sum(c.endswith("-dirty") for c in codes)
    if len(codes) > 1:
        note = f"stitched from {len(codes)} code versions, not one commit's results"
        return note + (f"; {dirty} of them with uncommitted changes (`-dirty`), not reproducible from their "
                       "commits alone" if dirty else "")
    return "uncommitted changes, not reproducible from the commit alone" if dirty else ""


def describe_data(dataset: str, path: str = "") -> str:
    """The data a page was measured on, by name and never by a local path: for CIFAR-10, whether our
    JPEG copy (quality 75, its pixels differ slightly from the standard files') or the standard one."""
    if dataset != "cifar10":
        return f"{dataset}" + (f" (`{Path(path).name}`)" if path else "")
    name = Path(path or os.environ.get("IWM_CIFAR10", "")).name
    if "jpg" in name or "jpeg" in name:
        return (f"CIFAR-10, our JPEG copy at quality 75 (`{name}`; its pixels differ slightly from the "
                "standard files')")
    if name in ("", "cifar-10-python.tar.gz", "cifar-10-batches-py"):
        return "CIFAR-10, the standard files (`cifar-10-python.tar.gz`)"
    return f"CIFAR-10 from `{name}`"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table: the header row, the rule, one line per row (cells as given)."""
    def line(cells: Sequence[object]) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def as_section(lines: list[str], title: str) -> list[str]:
    """The page one heading level down, under ``## title``: a page that sits beside another
    (a GPU run beside the CPU one)."""
    lines = [f"## {title}", *lines[1:]]
    return [f"#{line}" if line.startswith("## ") and i else line for i, line in enumerate(lines)]


def replace_marked(page: str, begin: str, end: str, content: str) -> str:
    """``page`` with what stands between the markers ``begin`` and ``end`` replaced by ``content``;
    the text around them (a reading written by hand) is kept. A page without the markers gets
    the marked block appended, never overwritten."""
    block = f"{begin}\n{content}{end}\n"
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        return head + block + rest.split(end, 1)[1].removeprefix("\n")
    return f"{page.rstrip()}\n\n{block}" if page.strip() else block


def marked(page: str, begin: str, end: str) -> str | None:
    """What stands between the markers (None where they are not both there)."""
    if begin not in page or end not in page:
        return None
    return page.split(begin, 1)[1].split(end, 1)[0].removeprefix("\n")


def refresh_quote(readme: Path, begin: str, end: str, content: str) -> bool:
    """Replace what ``readme`` quotes between the markers with ``content``, where it has them
    (True); a file without them is left alone (False)."""
    if not readme.is_file() or begin not in readme.read_text():
        return False
    write_text(readme, replace_marked(readme.read_text(), begin, end, content))
    return True


def write_page(out_md: Path, study: dict, markdown: str) -> None:
    """``out_md`` and, beside it, the study's raw numbers as ``out_md`` with ``.json`` (NaN as null)."""
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    write_json(study, out_md.with_suffix(".json"))
    write_text(out_md, markdown)
