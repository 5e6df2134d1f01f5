"""Filters a client sends through POST /subscriptions: costly patterns and expressions
are either refused at creation (400 naming the limit) or evaluated in bounded time and
memory, while /healthz keeps answering."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from adversary import Sidecar

pytestmark = pytest.mark.anyio

FILTER_MAX_SIZE = 8 * 1024  # limits.filters.max_size, the default
MB = 1024 * 1024


def _under_limit(head: str, piece: str, tail: str) -> str:
    """``head + piece * n + tail`` with the largest n that keeps it under max_size."""
    room = FILTER_MAX_SIZE - 64 - len(head) - len(tail)
    return head + piece * (room // len(piece)) + tail


async def _filtered(
    sidecar: Sidecar, spec: Any, bad: dict[str, Any], good: dict[str, Any], *, delivered: bool
) -> None:
    """Subscribe with ``spec``; publish ``bad`` then ``good`` while /healthz is probed;
    ``bad`` is filtered out, and ``good`` is delivered (or, where ``delivered`` is False,
    filtered out too: a spec so costly that every evaluation runs out of its budget)."""
    topic, sub = "filtered", f"f-{uuid.uuid4().hex[:8]}"
    with sidecar.watch() as watch:
        created = await sidecar.subscribe(topic, sub, filter=spec)
        assert created.status == 201, created
        first = await sidecar.publish(topic, **bad)
        assert first.status == 202, first
        second = await sidecar.publish(topic, **good)
        assert second.status == 202, second
        got, filtered = await _pull_until_filtered(sidecar, sub, 1 if delivered else 2)
    watch.check()
    assert filtered == (1 if delivered else 2)
    assert [e["id"] for e in got] == (second.body["ids"] if delivered else []), got
    await sidecar.assert_serves()


async def _pull_until_filtered(
    sidecar: Sidecar, sub: str, count: int
) -> tuple[list[dict[str, Any]], int]:
    """Pull (a pull subscription filters as it is read) until the subscription's
    ``filtered`` count reaches ``count``, 10 s at most; what came, and that count."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    filtered = 0
    while time.monotonic() < deadline:
        got += await sidecar.pull(sub, 1, wait=0.5)
        answer = await sidecar.call("GET", f"/subscriptions/{sub}")
        assert answer.status == 200, answer
        filtered = int(answer.body["stats"]["filtered"])
        if filtered >= count:
            break
    return got, filtered


async def test_wildcard_pattern_matches_in_linear_time(sidecar: Sidecar) -> None:
    """A `*a*a*...*b` wildcard against 40 a's answers at once; a matching event is delivered."""
    spec = {"pattern": {"subject": [{"wildcard": "*a" * 12 + "*b"}]}}
    await _filtered(
        sidecar, spec, {"subject": "a" * 48}, {"subject": "a" * 12 + "b"}, delivered=True
    )


LIKES = {
    # Many runs between '%': a naive matcher tries every split; a greedy one is linear.
    "%a x4000": (
        _under_limit("subject LIKE '", "%a", "%b'"),
        "a" * FILTER_MAX_SIZE + "b",
        True,
    ),
    # One long run of literals and '_': a search per start position is O(pattern x
    # value). Bounded by limits.filters.max_scan, every evaluation of it runs out of its
    # budget, so even a subject it would match is filtered out.
    "a_ x4000": (_under_limit("subject LIKE '%", "a_", "b%'"), "ax" * 4000 + "b", False),
}


@pytest.mark.parametrize("name", sorted(LIKES))
async def test_cesql_like_matches_in_linear_time(sidecar: Sidecar, name: str) -> None:
    """A LIKE pattern just under the size limit against a 1 MB subject does not stall
    the sidecar; a subject it matches is delivered unless the pattern is too costly to
    evaluate within limits.filters.max_scan."""
    expression, matching, delivered = LIKES[name]
    assert len(expression) < FILTER_MAX_SIZE
    await _filtered(
        sidecar,
        {"sql": expression},
        {"subject": "a" * MB},
        {"subject": matching},
        delivered=delivered,
    )


async def test_cesql_concat_is_bounded_in_memory(sidecar: Sidecar) -> None:
    """CONCAT of a 1 MB subject ~1000 times is an evaluation error (no match), not GBs."""
    expression = _under_limit("LENGTH(CONCAT(subject", ", subject", ")) > 0")
    await _filtered(
        sidecar, {"sql": expression}, {"subject": "a" * MB}, {"subject": "ok"}, delivered=True
    )


@pytest.mark.parametrize(
    ("name", "expression"),
    [
        ("4 MB of 1+1+...", "1" + "+1" * (2 * MB) + " = 2"),
        ("a 1 MB IN list", "subject IN (" + ", ".join(["'a'"] * (MB // 5)) + ")"),
    ],
)
async def test_oversized_expression_is_refused_quickly(
    sidecar: Sidecar, name: str, expression: str
) -> None:
    """An expression far above limits.filters.max_size is a 400 ConfigError naming the
    limit, answered without a stall or a memory spike."""
    with sidecar.watch() as watch:
        answer = await sidecar.subscribe("t", "big", filter={"sql": expression})
    watch.check()
    assert answer.status == 400, answer
    assert answer.type == "ConfigError", answer
    assert "max_size" in json.dumps(answer.body), answer
    await sidecar.assert_serves()


def _nest(levels: int, wrap: Any, leaf: Any) -> Any:
    spec = leaf
    for _ in range(levels):
        spec = wrap(spec)
    return spec


NESTED = {
    "not x900": _nest(900, lambda f: {"not": f}, {"exact": {"type": "x"}}),
    "all x300": _nest(300, lambda f: {"all": [f]}, {"exact": {"type": "x"}}),
    "any x300": _nest(300, lambda f: {"any": [f]}, {"prefix": {"type": "y"}}),
    "CESQL parentheses x900": {"sql": "(" * 900 + "true" + ")" * 900},
    "CESQL NOT x900": {"sql": "NOT " * 900 + "true"},
    "pattern data x300": {"pattern": {"data": _nest(300, lambda f: {"k": f}, ["v"])}},
}


@pytest.mark.parametrize("name", sorted(NESTED))
async def test_deep_nesting_is_refused_naming_the_depth_limit(sidecar: Sidecar, name: str) -> None:
    """A filter nested hundreds deep in any dialect is a 400 naming limits.filters.max_depth,
    not a 500 RecursionError."""
    with sidecar.watch() as watch:
        answer = await sidecar.subscribe("t", "deep", filter=NESTED[name])
    watch.check()
    assert answer.status == 400, answer
    assert answer.type == "ConfigError", answer
    assert "max_depth" in json.dumps(answer.body), answer
    await sidecar.assert_serves()
