"""The dispatcher's workers: a subscription starts as many tasks as its handlers need,
not one per lane, and still runs ``concurrency`` handlers at once when they wait."""

from __future__ import annotations

import asyncio

import anyio
import pytest

import eventmesh
from eventmesh import DeliveryPolicy, Event
from eventmesh.testing.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.core]


async def _tasks_after_delivering(concurrency: int) -> int:
    """Tasks running once a subscription of ``concurrency`` lanes, whose handler never
    waits, delivered 1,000 events (keyed, so every lane gets some)."""
    async with eventmesh.connect() as mesh:
        handled: list[int] = []

        async def handler(event: Event) -> None:
            handled.append(event.data)

        policy = DeliveryPolicy(concurrency=concurrency)
        async with mesh.subscribe("w", "g", handler=handler, delivery=policy):
            events = [
                Event(type="t", source="/s", data=n, extensions={"partitionkey": f"k{n % 64}"})
                for n in range(1_000)
            ]
            await mesh.publish("w", events)
            await eventually(lambda: len(handled) == len(events))
            return len(asyncio.all_tasks())


async def test_a_handler_that_never_waits_costs_no_task_per_lane() -> None:
    """16 lanes take no more tasks than 2 when no handler waits (each lane kept a task)."""
    assert await _tasks_after_delivering(16) == await _tasks_after_delivering(2)


async def test_handlers_that_wait_run_concurrency_at_once_and_no_more() -> None:
    """Handlers waiting on I/O get as many workers as ``concurrency`` allows, then the
    rest is handled as they return; keys are kept in order throughout."""
    release = anyio.Event()
    running = 0
    most = 0
    seen: dict[str, list[int]] = {}

    async def handler(event: Event) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await release.wait()
        finally:
            running -= 1
        seen.setdefault(event.partitionkey or "", []).append(event.data)

    # 200 keys, so that every one of the 8 lanes gets some: a key's lane is its hash()
    # modulo 8, and str hashes differ from process to process. With 40 keys a lane was
    # left without any about once in 25 runs (8 * (7/8) ** 40), and only 7 handlers
    # could ever run; with 200 the odds are 8 * (7/8) ** 200, about 2e-11.
    events = [
        Event(type="t", source="/s", data=n, extensions={"partitionkey": f"k{n % 200}"})
        for n in range(400)
    ]
    async with eventmesh.connect() as mesh:
        policy = DeliveryPolicy(concurrency=8, prefetch=400)
        async with mesh.subscribe("w", "g", handler=handler, delivery=policy) as sub:
            await mesh.publish("w", events)
            await eventually(lambda: running == 8)
            release.set()
            await eventually(lambda: sub.stats.delivered == len(events))
    assert most == 8
    assert len(seen) == 200
    assert all(seen[f"k{k}"] == [k, k + 200] for k in range(200))
