"""Specs from the network are compiled in a worker thread, not on the event loop."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

import eventmesh

pytestmark = pytest.mark.anyio


async def test_a_large_spec_compiles_while_the_loop_keeps_running() -> None:
    """Mesh.compile_specs leaves the loop free: a ticker task runs during the compile,
    which a compile on the loop (as subscribe does) would hold still."""
    items = ", ".join(f"'value-{n}'" for n in range(20_000))
    spec = {"sql": f"subject IN ({items})"}
    config = {"limits": {"filters": {"max_size": 400_000}}}
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with eventmesh.Mesh(config) as mesh, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        before = ticks
        compiled, _ = await mesh.compile_specs("orders", "g", spec)
        during = ticks - before
        done.set()
    assert compiled is not None
    assert compiled(eventmesh.Event(type="t", source="/s", subject="value-19999"))
    assert not compiled(eventmesh.Event(type="t", source="/s", subject="value-x"))
    assert during > 1, "the loop did not run while the spec compiled"
