"""Functions and reply handlers at shutdown: the drain finishes the calls in hand."""

from __future__ import annotations

import anyio
import pytest
from fn_support import FAST, eventually, order

from eventmesh import ClosedError, Event, Mesh

pytestmark = pytest.mark.anyio


async def test_a_reply_during_the_shutdown_drain_is_stored_and_the_event_acked() -> None:
    """A function that finishes while the mesh closes has its reply stored and its event
    acked: it is not re-run, and nothing is dead-lettered."""
    calls = 0
    started = anyio.Event()
    mesh = Mesh()

    @mesh.function(topic="orders", reply_to="out", delivery=FAST)
    async def enrich(event: Event) -> Event:
        nonlocal calls
        calls += 1
        started.set()
        await anyio.sleep(0.3)  # still running when the mesh starts to close
        return Event(type="enriched", source="/fn")

    async with mesh:
        await mesh.publish("orders", order(1))
        with anyio.fail_after(10):
            await started.wait()
        sub = next(s for s in mesh.subscriptions if s.name == "function.enrich")
    runner = mesh.functions[0]
    assert calls == 1
    assert (runner.stats.replies, runner.stats.failures) == (1, 0)
    assert (sub.stats.delivered, sub.stats.dead_lettered, sub.stats.retried) == (1, 0, 0)


async def test_a_handler_reply_during_the_shutdown_drain_is_stored() -> None:
    """A subscribe(reply_to=...) handler finishing while the mesh closes has its reply
    stored and its event acked, not retried and dead-lettered."""
    calls = 0
    started = anyio.Event()

    async def handler(event: Event) -> Event:
        nonlocal calls
        calls += 1
        started.set()
        await anyio.sleep(0.3)
        return Event(type="answer", source="/h")

    async with Mesh() as mesh:
        sub = await mesh.subscribe(
            "orders", "g", handler=handler, reply_to="out", delivery=FAST
        ).start()
        await mesh.publish("orders", order(1))
        with anyio.fail_after(10):
            await started.wait()
    assert calls == 1
    assert (sub.stats.delivered, sub.stats.dead_lettered, sub.stats.retried) == (1, 0, 0)


async def test_a_closed_error_while_closing_leaves_the_event_unacked() -> None:
    """A handler failing with ClosedError while its subscription closes leaves the event
    unacked (delivered again after a restart): it is neither retried nor dead-lettered."""
    calls = 0
    started = anyio.Event()
    mesh = Mesh()

    @mesh.function(topic="orders", delivery=FAST)
    async def closing(event: Event) -> None:
        nonlocal calls
        calls += 1
        started.set()
        await eventually(lambda: sub.closed)
        raise ClosedError("the store is closed")

    async with mesh:
        sub = next(s for s in mesh.subscriptions if s.name == "function.closing")
        await mesh.publish("orders", order(1))
        with anyio.fail_after(10):
            await started.wait()
    assert calls == 1
    stats = sub.stats
    assert (stats.delivered, stats.dead_lettered, stats.retried, stats.failed) == (0, 0, 0, 0)
