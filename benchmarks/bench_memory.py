"""The in-memory route: publish to acked delivery, against a bare asyncio queue."""

from __future__ import annotations

import asyncio
import time

import uvloop
from harness import Row, Section, best_of

from eventmesh import DeliveryPolicy, Event, Mesh

TITLE = "In-memory route (publish to acked delivery)"
BATCH = 100


def _events(n: int) -> list[Event]:
    return [Event(type="bench", source="/bench", data={"n": i}) for i in range(n)]


async def _bare(events: list[Event], groups: int) -> float:
    """The floor: a producer putting into bounded asyncio queues, one consumer per group."""
    queues: list[asyncio.Queue[Event]] = [asyncio.Queue(maxsize=4096) for _ in range(groups)]
    done = 0
    total = len(events) * groups
    finished = asyncio.Event()

    async def consume(queue: asyncio.Queue[Event]) -> None:
        nonlocal done
        while True:
            await queue.get()
            done += 1
            if done == total:
                finished.set()

    tasks = [asyncio.create_task(consume(q)) for q in queues]
    start = time.perf_counter()
    for event in events:
        for queue in queues:
            await queue.put(event)
    await finished.wait()
    elapsed = time.perf_counter() - start
    for task in tasks:
        task.cancel()
    return len(events) / elapsed


async def _mesh(events: list[Event], groups: int) -> float:
    """Events published in batches through a Mesh to async handlers in ``groups`` groups."""
    total = len(events) * groups
    done = 0
    finished = asyncio.Event()

    async def handler(event: Event) -> None:
        nonlocal done
        done += 1
        if done == total:
            finished.set()

    config = {"connectors": {"default": {"type": "memory", "max_events": 200_000}}}
    async with Mesh(config) as mesh:
        subs = [
            await mesh.subscribe("bench", f"g{g}", handler=handler, delivery=DeliveryPolicy())
            for g in range(groups)
        ]
        start = time.perf_counter()
        for i in range(0, len(events), BATCH):
            await mesh.publish("bench", events[i : i + BATCH])
        await finished.wait()
        elapsed = time.perf_counter() - start
        assert all(s.stats.delivered == len(events) for s in subs)
    return len(events) / elapsed


def main(quick: bool) -> Section:
    n = 50_000 if quick else 200_000
    events = _events(n)
    section = Section(TITLE)
    for groups in (1, 10):
        count = n if groups == 1 else n // 5
        sample = events[:count]
        bare = best_of(3, lambda s=sample, g=groups: uvloop.run(_bare(s, g)))
        mesh = best_of(3, lambda s=sample, g=groups: uvloop.run(_mesh(s, g)))
        section.rows.append(
            Row(
                name=f"{groups} group{'s' if groups > 1 else ''}, {count:,} events",
                value=mesh,
                unit="events/s",
                baseline=bare,
                baseline_name="bare asyncio queues",
                goal="200,000 events/s or more" if groups == 1 else "",
            )
        )
    section.notes += [
        f"Events are published in batches of {BATCH} to async handlers under the default "
        "delivery policy (concurrency 16, ordering by partition key, retries armed); a "
        "delivery counts once its handler returned and it was acked.",
        "events/s counts published events; with 10 groups each is delivered 10 times.",
        "The baseline is the least a Python loop can do: put each event on a bounded "
        "asyncio.Queue per group and take it off again, with no ack, ordering or retries.",
    ]
    return section
