"""eventmesh.testing's polling helpers wait as long as needed and fail saying what."""

from __future__ import annotations

import anyio
import pytest

from eventmesh.testing import eventually, holds_throughout

pytestmark = [pytest.mark.anyio, pytest.mark.core]  # core: CI runs these on the core alone


async def test_eventually_returns_once_the_condition_holds() -> None:
    """A condition that becomes true after a few checks ends the wait then."""
    checks = 0

    def ready() -> bool:
        nonlocal checks
        checks += 1
        return checks >= 3

    await eventually(ready, interval=0.001)
    assert checks == 3


async def test_eventually_accepts_an_async_condition() -> None:
    """A coroutine condition is awaited at each check."""
    flag = anyio.Event()

    async def is_set() -> bool:
        flag.set()
        return flag.is_set()

    await eventually(is_set)
    assert flag.is_set()


async def test_eventually_fails_naming_what_it_waited_for() -> None:
    """Past the timeout it raises AssertionError naming the awaited thing."""
    with pytest.raises(AssertionError, match=r"after 0\.05 s for: the sink's 3 requests"):
        await eventually(lambda: False, timeout=0.05, what="the sink's 3 requests")


async def test_holds_throughout_fails_the_moment_the_condition_breaks() -> None:
    """An absence check fails as soon as the unwanted thing happens."""
    seen: list[int] = []

    async def arrive_later() -> None:
        await anyio.sleep(0.02)
        seen.append(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(arrive_later)
        with pytest.raises(AssertionError, match="stopped holding: nothing arrived"):
            await holds_throughout(lambda: not seen, 5, what="nothing arrived")


async def test_holds_throughout_passes_when_nothing_breaks_it() -> None:
    """A condition true for the whole period passes, checked more than once."""
    checks = 0

    def quiet() -> bool:
        nonlocal checks
        checks += 1
        return True

    await holds_throughout(quiet, 0.03, interval=0.005)
    assert checks >= 2
