"""Waiting in tests without guessing: poll a condition until it holds, or fail saying what.

A fixed ``sleep`` followed by an assertion fails on a slow machine and wastes time on a
fast one. :func:`eventually` checks a condition until it holds and fails with a message
naming what was awaited; :func:`holds_throughout` is the honest form of an absence check
(nothing arrives during a stated period), for the few cases where no later event can
prove the absence instead.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["eventually", "holds_throughout"]

Condition = Callable[[], bool | Awaitable[bool]]
"""A check that returns true once the awaited state is reached; it may be a coroutine."""


async def _check(condition: Condition) -> bool:
    result = condition()
    if not isinstance(result, bool):
        result = await result
    return result


async def eventually(
    condition: Condition,
    *,
    timeout: float = 20.0,
    interval: float = 0.01,
    what: str | None = None,
) -> None:
    """Return as soon as ``condition()`` is true; raise ``AssertionError`` after
    ``timeout`` seconds, naming ``what`` (or the condition) and how long it waited.

    The condition is checked at once and then every ``interval`` seconds, so a
    condition that already holds costs no wait at all; the generous default timeout
    only matters when the test is failing anyway.
    """
    deadline = anyio.current_time() + timeout
    while not await _check(condition):
        if anyio.current_time() >= deadline:
            name = what or getattr(condition, "__name__", repr(condition))
            raise AssertionError(f"still waiting after {timeout:g} s for: {name}")
        await anyio.sleep(interval)


async def holds_throughout(
    condition: Condition,
    period: float,
    *,
    interval: float = 0.01,
    what: str | None = None,
) -> None:
    """Check ``condition()`` for ``period`` seconds and raise ``AssertionError`` naming
    ``what`` the first time it is false (for example "no second delivery arrived").

    Prefer proving an absence by an event that must come after it (a marker published
    last, on the same key); use this only where no such event exists.
    """
    if not math.isfinite(period) or period < 0:
        raise ValueError(f"period must be a finite number of seconds >= 0, got {period!r}")
    deadline = anyio.current_time() + period
    while True:
        if not await _check(condition):
            name = what or getattr(condition, "__name__", repr(condition))
            raise AssertionError(f"stopped holding: {name}")
        if anyio.current_time() >= deadline:
            return
        await anyio.sleep(interval)
