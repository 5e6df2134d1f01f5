"""Per-function controls: threads for plain functions, timeout, concurrency, rate, batches."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from fn_support import FAST, eventually, order, read

from eventmesh import Event, Mesh
from eventmesh.testing.polling import holds_throughout

pytestmark = pytest.mark.anyio


async def test_a_blocking_function_does_not_block_the_loop() -> None:
    """A plain function blocked in its thread leaves the loop free: an async subscriber
    on another topic handles all its events while the function still blocks."""
    release = threading.Event()
    entered = threading.Event()
    mesh = Mesh()

    @mesh.function(topic="slow", concurrency=2)
    def blocking(event: Event) -> None:
        entered.set()
        if not release.wait(timeout=30):  # blocks its thread, never the loop
            raise TimeoutError("never released")

    fast: list[int] = []
    async with mesh:

        async def quick(event: Event) -> None:
            fast.append(event.data["n"])

        async with mesh.subscribe("fast", "quick", handler=quick):
            await mesh.publish("slow", [order(i) for i in range(4)])
            await eventually(entered.is_set)
            await mesh.publish("fast", [order(i) for i in range(50)])
            await eventually(lambda: len(fast) == 50)
            runner = mesh.functions[0]
            assert runner.stats.in_flight == 2  # the blocking calls are still running
            assert runner.state == "running"
            release.set()
            await eventually(lambda: runner.stats.invocations == 4 and not runner.stats.in_flight)


async def test_a_timed_out_invocation_is_cancelled_and_retried() -> None:
    """An async function past its timeout is cancelled, counted as a timeout and a
    failure, and the event is retried."""
    cancelled = anyio.Event()
    calls = 0
    mesh = Mesh()

    @mesh.function(topic="orders", timeout="100ms", reply_to="out", delivery=FAST)
    async def slow_once(event: Event) -> Event:
        nonlocal calls
        calls += 1
        if calls == 1:
            try:
                await anyio.sleep(30)
            except anyio.get_cancelled_exc_class():
                cancelled.set()
                raise
        return Event(type="done", source="/fn")

    async with mesh:
        await mesh.publish("orders", order(1))
        (reply,) = await read(mesh, "out", 1)
        stats = mesh.functions[0].stats
        assert cancelled.is_set()
        assert (stats.invocations, stats.timeouts, stats.failures) == (2, 1, 1)
    assert reply.type == "done"


async def test_a_timed_out_thread_is_abandoned_and_dead_lettered() -> None:
    """A plain function that overruns every attempt ends in the dead-letter topic with
    a timeout error (the threads are abandoned, not killed)."""
    release = threading.Event()
    mesh = Mesh()

    @mesh.function(topic="orders", timeout="50ms", delivery={**FAST, "max_attempts": 2})
    def stuck(event: Event) -> None:
        release.wait(timeout=30)

    try:
        async with mesh:
            await mesh.publish("orders", order(1))
            (dead,) = await read(mesh, "orders.dlq", 1)
            assert mesh.functions[0].stats.timeouts == 2
        assert "timed out after 0.05s" in dead.extensions["deadlettererror"]
    finally:
        release.set()


async def test_concurrency_limits_invocations_in_flight() -> None:
    """No more than `concurrency` invocations of a function run at once."""
    release = anyio.Event()
    active = 0
    most = 0
    mesh = Mesh()

    @mesh.function(topic="orders", concurrency=3, delivery={"ordering": "none"})
    async def busy(event: Event) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await release.wait()
        active -= 1

    async with mesh:
        await mesh.publish("orders", [order(i) for i in range(20)])
        await eventually(lambda: active == 3)
        # Room for a fourth to start, had the limit let it.
        await holds_throughout(lambda: most == 3, 0.2, what="at most 3 running at once")
        release.set()
        await eventually(lambda: mesh.functions[0].stats.invocations == 20)
    assert most == 3


async def test_rate_limit_spaces_invocations() -> None:
    """With rate_limit r and burst 1, invocation k+1 starts at least (k-1)/r seconds
    after the first (one interval of slack for when the first call began)."""
    starts: list[float] = []
    mesh = Mesh()

    @mesh.function(topic="orders", rate_limit=20, delivery={"ordering": "none"})
    async def limited(event: Event) -> None:
        starts.append(time.monotonic())

    async with mesh:
        await mesh.publish("orders", [order(i) for i in range(8)])
        await eventually(lambda: len(starts) == 8)
    for k, at in enumerate(starts):
        assert at - starts[0] >= (k - 1) / 20


async def test_batches_give_lists_and_ack_every_event() -> None:
    """A batched function gets lists of up to `max` events; every event arrives in
    exactly one batch and is acked once the batch returned."""
    batches: list[list[int]] = []
    mesh = Mesh()

    @mesh.function(topic="orders", batch={"max": 5, "window": "200ms"}, reply_to="out")
    async def tally(events: list[Event]) -> Event:
        batches.append([e.data["n"] for e in events])
        return Event(type="tally", source="/fn", data={"count": len(events)})

    async with mesh:
        await mesh.publish("orders", [order(i) for i in range(12)])
        sub = next(s for s in mesh.subscriptions if s.name == "function.tally")
        await eventually(lambda: sub.stats.delivered == 12)
        replies = await read(mesh, "out", len(batches))
        assert mesh.functions[0].stats.invocations == len(batches)
    assert sorted(n for b in batches for n in b) == list(range(12))
    assert all(1 <= len(b) <= 5 for b in batches)
    assert max(len(b) for b in batches) > 1
    assert sum(r.data["count"] for r in replies) == 12


async def test_a_failed_batch_retries_its_events_then_dead_letters_them() -> None:
    """A batch that raises has each of its events retried under the policy and, when
    every attempt fails, dead-lettered."""
    mesh = Mesh()

    @mesh.function(topic="orders", batch={"max": 3, "window": "50ms"}, delivery=FAST)
    async def broken(events: list[Event]) -> None:
        raise RuntimeError("batch failed")

    async with mesh:
        await mesh.publish("orders", [order(i) for i in range(3)])
        dead = await read(mesh, "orders.dlq", 3)
    assert sorted(d.data["n"] for d in dead) == [0, 1, 2]
    assert all("batch failed" in d.extensions["deadlettererror"] for d in dead)
