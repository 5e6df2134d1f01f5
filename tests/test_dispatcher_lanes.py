"""The dispatcher's lanes cost an idle subscription nothing per unit of ``concurrency``:
a lane exists while it holds events (a few freed ones are kept for reuse), and a grouped
(webhook batch) lane has a task only then."""

from __future__ import annotations

import asyncio
import gc

import anyio
import anyio.lowlevel
import pytest
from test_webhook_batching import Receiver

import eventmesh
from eventmesh import DeliveryPolicy, Event, Mesh
from eventmesh.delivery.lanes import Lane
from eventmesh.testing.polling import eventually

pytestmark = pytest.mark.anyio


def batch_mesh(url: str, *, concurrency: int) -> Mesh:
    """A mesh with one webhook subscription, ``push``, in batch mode."""
    sink = {"webhook": url, "mode": "batch", "max_batch": 10, "batch_window": "60s"}
    sub = {
        "name": "push",
        "topic": "orders",
        "sink": sink,
        "delivery": {"concurrency": concurrency},
    }
    return Mesh({"subscriptions": [sub]})


SPARE = 16
"""Freed lanes a subscription may keep for reuse (eventmesh.delivery.lanes._SPARE)."""


def lanes_alive() -> int:
    """Lanes held anywhere in the process (each holds a deque of its own); the tests
    count from those alive before them, which other tests may have left."""
    gc.collect()
    return sum(type(o) is Lane for o in gc.get_objects())


def lane_tasks(subscription: str) -> int:
    """Tasks of the subscription's grouped lanes that are running."""
    return sum(t.get_name() == f"eventmesh-lane {subscription}" for t in asyncio.all_tasks())


async def _idle_batch_subscription(concurrency: int) -> tuple[int, int]:
    """Tasks running and lanes alive with one idle batch-mode subscription."""
    async with Receiver() as receiver, batch_mesh(receiver.url, concurrency=concurrency):
        for _ in range(10):  # let every task the subscription starts get going
            await anyio.lowlevel.checkpoint()
        counts = len(asyncio.all_tasks()), lanes_alive()
    return counts


async def test_an_idle_batch_subscription_starts_no_task_and_no_lane_per_lane() -> None:
    """Concurrency 1,000 costs an idle batch-mode subscription no more tasks than
    concurrency 1, and no lane (each of the 1,000 lanes had a task and a deque)."""
    before = lanes_alive()
    tasks_at_1, lanes_at_1 = await _idle_batch_subscription(1)
    tasks_at_1000, lanes_at_1000 = await _idle_batch_subscription(1000)
    assert tasks_at_1000 == tasks_at_1
    assert lanes_at_1 == lanes_at_1000 == before


async def test_an_idle_subscription_holds_no_lane_per_unit_of_concurrency() -> None:
    """A handler subscription of concurrency 1,000 makes lanes for its events only, and
    keeps no more than the spares once they were handled, however many lanes they took."""
    release = anyio.Event()
    handled: list[int] = []

    async def handler(event: Event) -> None:
        await release.wait()
        handled.append(event.data)

    events = [
        Event(type="t", source="/s", data=n, extensions={"partitionkey": f"k{n}"})
        for n in range(600)
    ]
    before = lanes_alive()
    async with eventmesh.connect() as mesh:
        policy = DeliveryPolicy(concurrency=1000)
        async with mesh.subscribe("w", "g", handler=handler, delivery=policy) as sub:
            assert lanes_alive() == before
            await mesh.publish("w", events)
            await eventually(lambda: sub.stats.received == len(events))
            assert before < lanes_alive() <= before + len(events)
            release.set()
            await eventually(lambda: len(handled) == len(events))
            await eventually(lambda: lanes_alive() <= before + SPARE)


async def test_batch_lanes_come_for_events_and_go_with_them_in_key_order() -> None:
    """At concurrency 1,000 a backlog still goes in batches of more than one event, each
    key in order; afterwards no lane task and no lane but the spares is left, and the
    next events make them again."""
    events = [
        Event(type="t", source="/s", data={"n": n}, extensions={"partitionkey": f"k{n % 7}"})
        for n in range(140)
    ]
    before = lanes_alive()
    async with Receiver() as receiver, batch_mesh(receiver.url, concurrency=1000) as mesh:
        sub = mesh.subscriptions[0]

        async def deliver(part: list[Event]) -> None:
            target = sub.stats.delivered + len(part)
            await mesh.publish("orders", part)
            await eventually(lambda: sub.stats.delivered == target, timeout=30)
            await eventually(lambda: lane_tasks("push") == 0 and lanes_alive() <= before + SPARE)

        await deliver(events[:70])
        await deliver(events[70:])
    received = receiver.delivered()
    assert sorted(e["id"] for e in received) == sorted(e.id for e in events)
    assert max(len(batch) for _, batch in receiver.batches) > 1
    assert all(len(batch) <= 10 for _, batch in receiver.batches)
    for key in {e.extensions["partitionkey"] for e in events}:
        sent = [e.id for e in events if e.extensions["partitionkey"] == key]
        assert [e["id"] for e in received if e["partitionkey"] == key] == sent, key


async def test_a_keys_next_event_waits_for_the_one_in_its_handler() -> None:
    """A key's event fetched while its previous one is still in the handler joins that
    lane (not a new one), so it runs after it, never beside it."""
    release = anyio.Event()
    running: list[int] = []
    order: list[int] = []

    async def handler(event: Event) -> None:
        running.append(event.data)
        if event.data == 0:
            await release.wait()
        order.append(event.data)
        running.remove(event.data)

    def keyed(n: int) -> Event:
        return Event(type="t", source="/s", data=n, extensions={"partitionkey": "k"})

    async with eventmesh.connect() as mesh:
        policy = DeliveryPolicy(concurrency=1000)
        async with mesh.subscribe("w", "g", handler=handler, delivery=policy) as sub:
            await mesh.publish("w", [keyed(0)])
            await eventually(lambda: running == [0])
            await mesh.publish("w", [keyed(n) for n in range(1, 5)])
            await eventually(lambda: sub.stats.received == 5)
            for _ in range(20):  # turns for a second worker, were it to take one
                await anyio.lowlevel.checkpoint()
            assert running == [0]
            release.set()
            await eventually(lambda: sub.stats.delivered == 5)
    assert order == [0, 1, 2, 3, 4]
