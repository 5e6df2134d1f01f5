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


async def test_specs_from_the_network_compile_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many compiles at once (a flood of subscription requests) run in one worker thread
    after another: each holds the interpreter lock for most of its compile, so forty
    threads at once would leave the loop a fortieth of it."""
    import threading

    from eventmesh import mesh as mesh_module

    real = mesh_module.compile_pipeline
    lock = threading.Lock()
    running = most = 0

    def watched(*args: object, **kwargs: object) -> object:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            threading.Event().wait(0.02)  # long enough for the others to start, were they free
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(mesh_module, "compile_pipeline", watched)
    results: list[object] = []
    async with eventmesh.Mesh() as mesh, anyio.create_task_group() as tg:

        async def compile_one(n: int) -> None:
            compiled, _ = await mesh.compile_specs("orders", f"g{n}", {"sql": f"subject = 's{n}'"})
            results.append(compiled)

        for n in range(8):
            tg.start_soon(compile_one, n)
    assert len(results) == 8
    assert most == 1
