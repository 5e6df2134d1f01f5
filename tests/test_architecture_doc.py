"""The figures docs/architecture.md gives are the ones the code uses."""

from __future__ import annotations

import re
from pathlib import Path

from eventmesh import subscription
from eventmesh.delivery import dispatcher

DOC = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text("utf-8")


def _figure(pattern: str) -> float:
    found = re.search(pattern, " ".join(DOC.split()))
    assert found, f"docs/architecture.md no longer says {pattern!r}: update this test"
    return float(found.group(1))


def test_the_dispatcher_fetch_size_is_the_documented_one() -> None:
    """'The dispatcher asks for at most min(room, N)' names the dispatcher's batch."""
    assert _figure(r"`min\(room, (\d+)\)`") == dispatcher._FETCH_BATCH


def test_the_iterator_batch_is_the_documented_one() -> None:
    """'Subscription fetches batches of N itself' names the iterator form's batch."""
    assert _figure(r"fetches batches of (\d+) itself") == subscription._ITER_BATCH


def test_the_close_timeout_is_the_documented_one() -> None:
    """'under one timeout (N s by default)' is the subscriptions' close timeout."""
    assert _figure(r"under one timeout \((\d+) s by default\)") == subscription._CLOSE_TIMEOUT


def test_the_layer_stack_is_the_contract() -> None:
    """The stack of layers the page draws is the import-linter contract, line for line."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    drawn = re.search(r"```\ncli\n(.*?)```", DOC, flags=re.DOTALL)
    assert drawn, "docs/architecture.md no longer draws the layer stack"
    assert ["cli", *drawn.group(1).splitlines()] == contract["layers"]
