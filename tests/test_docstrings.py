"""Module docstrings summarise and link; docs/*.md is the one place for the manual.

A module docstring says what the module is in a few lines and points to the docs page
section that explains it ("See docs/filters.md, 'Content patterns'."). These tests keep
docstrings from growing back into a second manual and keep their links from going stale.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MAX_LINES = 25
# Long on purpose: the house style draws the exception tree in errors.py, and _status.py
# is the one table of error classes to HTTP and gRPC codes.
LONG_ON_PURPOSE = {Path("eventmesh/errors.py"), Path("eventmesh/_status.py")}

_LINK = re.compile(r"docs/([\w.-]+\.md)")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# A heading in single quotes; an apostrophe inside a word ("kit's") belongs to it.
_QUOTED = re.compile(r"(?<![\w`'])'((?:[^'`\n]|'(?=\w))+)'(?![\w`'])")


def _modules() -> list[Path]:
    found = [*ROOT.joinpath("eventmesh").rglob("*.py"), *ROOT.glob("plugins/*/eventmesh_*/**/*.py")]
    return sorted(p.relative_to(ROOT) for p in found if "_generated" not in p.parts)


def _docstring(path: Path) -> tuple[str, int] | None:
    """The module docstring of ``path`` and the lines it spans in the file, if it has one."""
    tree = ast.parse((ROOT / path).read_text("utf-8"))
    first = tree.body[0] if tree.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
        and first.end_lineno is not None
    ):
        return first.value.value, first.end_lineno - first.lineno + 1
    return None


def _headings(page: str) -> set[str]:
    text = (DOCS / page).read_text("utf-8")
    titles = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            titles.add(line.lstrip("#").strip().replace("`", ""))
    return titles


def links(doc: str) -> list[tuple[str, list[str]]]:
    """Each docs page a docstring names, with the headings quoted in the same sentence."""
    text = " ".join(doc.split())
    found = []
    for match in _LINK.finditer(text):
        rest = text[match.end() :]
        end = _SENTENCE_END.search(rest)
        sentence = rest[: end.start() if end else len(rest)]
        # The headings named for this page stop where the next page is named.
        sentence = _LINK.split(sentence, maxsplit=1)[0]
        found.append((match.group(1), _QUOTED.findall(sentence)))
    return found


MODULES = _modules()


def test_the_scan_finds_the_modules() -> None:
    """The scan sees the core and the plugins, so the tests below are not vacuous."""
    assert Path("eventmesh/pipeline/cesql.py") in MODULES
    assert any(p.parts[0] == "plugins" for p in MODULES)
    assert "Content patterns" in _headings("filters.md")
    assert "The local connector (type: local)" in _headings("configuration.md")


@pytest.mark.parametrize("path", MODULES, ids=str)
def test_a_module_docstring_is_a_summary(path: Path) -> None:
    """A module docstring runs at most 25 lines: the manual is in docs/*.md."""
    found = _docstring(path)
    if found is None or path in LONG_ON_PURPOSE:
        return
    lines = found[1]
    assert lines <= MAX_LINES, (
        f"{path}: the module docstring runs {lines} lines (at most {MAX_LINES}); move what a"
        " user or an operator needs to the docs page and link it ('See docs/x.md, 'Section'.')"
    )


@pytest.mark.parametrize("path", MODULES, ids=str)
def test_docs_links_in_a_module_docstring_resolve(path: Path) -> None:
    """Every docs/*.md page a module docstring names exists, with the headings it quotes."""
    found = _docstring(path)
    if found is None:
        return
    for page, headings in links(found[0]):
        assert (DOCS / page).is_file(), f"{path} links docs/{page}, which does not exist"
        missing = set(headings) - _headings(page)
        assert not missing, f"{path} names {sorted(missing)} in docs/{page}, no such heading"


def test_a_link_is_read_with_its_headings() -> None:
    """The link reader takes the headings of one sentence and stops at the next page."""
    doc = (
        "X.\n\nSee docs/filters.md, 'CloudEvents SQL', and\n'Errors are values'; also"
        " docs/connectors.md, 'The kit's knobs'. Then ``'x'`` and 'Not a heading'."
    )
    assert links(doc) == [
        ("filters.md", ["CloudEvents SQL", "Errors are values"]),
        ("connectors.md", ["The kit's knobs"]),
    ]
