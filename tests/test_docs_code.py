"""The Python in README.md and docs/functions.md runs as shown.

A block fenced as plain ```python is a whole program: the test runs it and it must exit
0 within a minute. A block fenced ```python fragment (part of a program) or
```python server (a program that serves until stopped) is compiled, so it is at least
valid Python, top-level ``await`` allowed.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/functions.md")
_FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_KINDS = {"", "fragment", "server"}


def _blocks() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{page}:{line}", match.group(1).strip(), match.group(2)))
    return found


BLOCKS = _blocks()


def test_every_page_has_a_block_that_runs() -> None:
    """Each page checked here shows at least one whole program, and marks no block
    with a kind this test does not know."""
    for page in PAGES:
        kinds = [kind for where, kind, _ in BLOCKS if where.startswith(page + ":")]
        assert "" in kinds, f"{page} has no runnable ```python block"
    unknown = {(where, kind) for where, kind, _ in BLOCKS if kind not in _KINDS}
    assert not unknown, f"unknown fence kinds (use fragment or server): {unknown}"


@pytest.mark.parametrize(("where", "kind", "code"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_the_block_runs_as_shown(where: str, kind: str, code: str, tmp_path: Path) -> None:
    """A whole program exits 0; a fragment or a server at least compiles."""
    compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if kind:
        return
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, f"{where} failed:\n{run.stdout}\n{run.stderr}"
