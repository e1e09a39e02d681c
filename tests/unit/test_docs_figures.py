"""Every figure the docs quote is the one in the results file it names.

The convention (stated for readers in docs/benchmarks.md): a measured figure is quoted only in a
paragraph, list item or table that links its results file under benchmarks/results/ (a table
counts the paragraph just above it, its caption, as its own). Each number in such a quote must
be in one of the files it links: as written there (the text of a .md, .csv or .json file), or as
a value of the file rounded the way the quote writes it, possibly as a percentage (0.9041 is
quoted 90.41%) or in the next unit (546.04 µs is quoted 0.55 ms). Numbers in `code spans`, in
link targets and inside names (ResNet-50, FP32, avx512f, 224²) are not figures.

A figure the results do not hold (retyped from an older run, or computed in one's head) fails,
naming the page, the quote and the number.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
# The generated pages quote no measurements.
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md")
                                     if p.name not in ("cli.md", "backend-contract.md"))]

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`[^`]*`")
# A number standing alone: not part of a name (a letter, digit, '_', '-', '.' or '/' before it,
# a letter, digit or '²' after it).
_FIGURE = re.compile(r"(?<![\w.\-/])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e-?\d+)?(?!\w)")
# Any number in a results file, names included (a JSON key such as "resnet50", a value 1.2e-05).
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_SCALES = (1, 100, 1e-3, 1e3)
_ITEM = re.compile(r"\s*(?:[-*]|\d+\.) ")


def quotes(text: str) -> list[str]:
    """The paragraphs, list items and tables (each with its caption) of a markdown text, fenced
    code left out."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    blocks: list[list[str]] = []
    previous = ""  # the line before; empty after a blank line or a heading
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            previous = ""
            continue
        if previous and previous.startswith("|") == line.startswith("|") and not _ITEM.match(line):
            blocks[-1].append(line)
        else:
            blocks.append([line])
        previous = line
    tables = [block[0].startswith("|") for block in blocks]
    return ["\n".join(blocks[i - 1] + block if tables[i] and i and not tables[i - 1] else block)
            for i, block in enumerate(blocks)]


def links(quote: str) -> list[str]:
    """The targets of the quote's markdown links and images (a `code span` holds none)."""
    return _LINK.findall(_CODE_SPAN.sub(" ", quote))


def linked_results(quote: str, page: Path) -> list[Path]:
    """The results files (text, not images) a quote links, resolved from its page."""
    linked = []
    for target in links(quote):
        path = (page.parent / target.split("#")[0]).resolve()
        if path.is_relative_to(RESULTS) and path.suffix in (".md", ".json", ".csv"):
            linked.append(path)
    return linked


def figures(quote: str) -> list[str]:
    prose = _LINK.sub("]", _CODE_SPAN.sub(" ", quote))
    return [match.group(0) for match in _FIGURE.finditer(prose)]


def holds(figure: str, results_text: str) -> bool:
    """Whether the figure, as written, is in the results text or is one of its values rounded
    as the figure is written (and scaled by one of _SCALES)."""
    written = figure.replace(",", "")
    numbers = _NUMBER.findall(results_text)
    if written in numbers:
        return True
    mantissa, _, exponent = written.partition("e")
    decimals = len(mantissa.partition(".")[2])
    quoted = float(written)
    for number in map(float, numbers):
        for scale in _SCALES:
            value = number * scale
            if exponent:
                rounded = f"{value:.{decimals}e}"
                if float(rounded) == quoted and math.isfinite(value):
                    return True
            elif f"{value:.{decimals}f}" == mantissa:
                return True
    return False


def misquoted(page: Path) -> list[str]:
    problems = []
    for quote in quotes(page.read_text()):
        files = linked_results(quote, page)
        if not files:
            continue
        text = "\n".join(file.read_text() for file in files if file.is_file())
        for figure in figures(quote):
            if not holds(figure, text):
                problems.append(f"{figure} is not in {', '.join(f.name for f in files)}: {quote[:120]!r}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_figure_a_page_quotes_is_in_the_results_file_it_links(page: Path) -> None:
    assert misquoted(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_file_a_page_links_exists(page: Path) -> None:
    """mkdocs --strict checks the links of docs/; the README is not part of the site."""
    missing = [target for quote in quotes(page.read_text()) for target in links(quote)
               if "://" not in target and not (page.parent / target.split("#")[0]).exists()]
    assert missing == []


def test_a_retyped_figure_is_caught(tmp_path: Path) -> None:
    """The check itself: the demo's served top-1 as the results file has it passes; the same
    sentence with a figure off by one in its last digit does not."""
    (tmp_path / "docs").mkdir()
    link = f"[demo summary]({RESULTS / 'demo-summary-2core-cpu.json'})"
    page = tmp_path / "docs" / "page.md"
    page.write_text(f"Served top-1 90.41%, p50 1.03 ms on ResNet-20 ({link}).\n")
    assert misquoted(page) == []
    page.write_text(f"Served top-1 90.42%, p50 1.03 ms on ResNet-20 ({link}).\n")
    assert [problem.split(" is not")[0] for problem in misquoted(page)] == ["90.42"]
