"""Every rule the code cites exists: each ``docs/PROTOCOL.md §N`` (or ``§N.M``) in a
docstring, an error message, a conformance rule or a doc names a section of
docs/PROTOCOL.md, and nothing cites a file outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
PROTOCOL = ROOT / "docs" / "PROTOCOL.md"
#: Where citations live: code, tests, the conformance suite, the docs.
SOURCES = [
    *ROOT.glob("src/**/*.py"),
    *ROOT.glob("conformance/src/**/*.py"),
    *ROOT.glob("tests/**/*.py"),
    *ROOT.glob("docs/*.md"),
    ROOT / "README.md",
    ROOT / "conformance" / "README.md",
]
CITATION = re.compile(r"PROTOCOL\.md,?\s+((?:§\d+(?:\.\d+)?(?:,\s*|\s+and\s+|-)?)+)")
#: Files that are not in this repository, and a revision name nobody outside knows.
FOREIGN = re.compile(r"STACK\.md|ANCHORS\.md|examples/\d\d|[Ss]eed 000|(?<![\w/])PROTOCOL\.md §")


def _sections() -> set[str]:
    found = set()
    for line in PROTOCOL.read_text().splitlines():
        if match := re.match(r"#{2,3} (\d+(?:\.\d+)?)\.? ", line):
            found.add(match.group(1))
    return found


def test_the_protocol_has_numbered_sections() -> None:
    sections = _sections()
    assert {"2", "2.4", "4.1", "5.3", "6", "7.1", "7.6", "8"} <= sections


def test_every_cited_section_exists() -> None:
    sections = _sections()
    missing: list[str] = []
    cited = 0
    for path in SOURCES:
        if path == PROTOCOL or "__pycache__" in path.parts:
            continue
        text = path.read_text()
        for match in CITATION.finditer(text):
            for number in re.findall(r"§(\d+(?:\.\d+)?)", match.group(1)):
                cited += 1
                if number not in sections:
                    line = text.count("\n", 0, match.start()) + 1
                    missing.append(f"{path.relative_to(ROOT)}:{line}: §{number}")
    assert cited > 50, "the citations were found"
    assert missing == []


def test_nothing_cites_a_file_outside_the_repository() -> None:
    foreign = []
    for path in SOURCES:
        if "__pycache__" in path.parts or path.name == "test_citations.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if FOREIGN.search(line):
                foreign.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert foreign == []
