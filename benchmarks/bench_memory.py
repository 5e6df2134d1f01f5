"""The in-memory route: publish to acked delivery, against bare asyncio queues, and
spread over 1,000 topics against one topic.

    python benchmarks/run.py memory
    python benchmarks/bench_memory.py --profile   # cProfile of the 1-group route
    python benchmarks/bench_memory.py --profile --topics   # ... spread over 1,000 topics
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import gc
import io
import pstats
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop
from harness import Measure, Row, Section, cli, interleave

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


async def _mesh(events: list[Event], groups: int, topics: int = 1) -> float:
    """Events published in batches through a Mesh to async handlers in ``groups`` groups
    of each of ``topics`` topics (batch i to topic i mod ``topics``)."""
    total = len(events) * groups
    done = 0
    finished = asyncio.Event()

    async def handler(event: Event) -> None:
        nonlocal done
        done += 1
        if done == total:
            finished.set()

    config = {"connectors": {"default": {"type": "memory", "max_events": 200_000}}}
    names = [f"bench{t}" for t in range(topics)]
    async with Mesh(config) as mesh:
        subs = [
            await mesh.subscribe(name, f"g{g}", handler=handler, delivery=DeliveryPolicy())
            for name in names
            for g in range(groups)
        ]
        gc.collect()  # start-up's garbage is not the route's: collected before the clock
        start = time.perf_counter()
        for n, i in enumerate(range(0, len(events), BATCH)):
            await mesh.publish(names[n % topics], events[i : i + BATCH])
        await finished.wait()
        elapsed = time.perf_counter() - start
        assert sum(s.stats.delivered for s in subs) == total
    return len(events) / elapsed


def _measure(
    events: list[Event], run: Callable[..., Coroutine[Any, Any, float]], *args: int
) -> Measure:
    """One round of ``run`` on a fresh loop: its rate, and this process's CPU per event."""
    cpu = time.process_time()
    rate = uvloop.run(run(events, *args))
    return Measure(rate=rate, cpu_us=(time.process_time() - cpu) / len(events) * 1e6)


def main(quick: bool) -> Section:
    n = 50_000 if quick else 200_000
    events = _events(n)
    section = Section(TITLE)
    rounds = 3
    for groups in (1, 10):
        count = n if groups == 1 else n // 5
        sample = events[:count]
        print(f"  {groups} group(s)", flush=True)
        medians = interleave(
            rounds,
            {
                "bare": functools.partial(_measure, sample, _bare, groups),
                "mesh": functools.partial(_measure, sample, _mesh, groups),
            },
        )
        mesh, bare = medians["mesh"], medians["bare"]
        section.rows.append(
            Row(
                name=f"{groups} group{'s' if groups > 1 else ''}, {count:,} events",
                value=mesh.rate,
                unit="events/s",
                baseline=bare.rate,
                baseline_name="bare asyncio queues",
                goal="0.40x or more" if groups == 1 else "",
                load=f"{mesh.load} (baseline {bare.load})",
            )
        )
        section.notes.append(
            f"{groups} group(s), rates of each round, mesh/bare: "
            + ", ".join(
                f"{a.rate:,.0f}/{b.rate:,.0f}"
                for a, b in zip(mesh.rounds, bare.rounds, strict=True)
            )
            + f"; CPU per published event (whole process, start-up included) {mesh.cpu_us:.1f} "
            f"against {bare.cpu_us:.1f} µs."
        )
    print(f"  {TOPICS:,} topics", flush=True)
    medians = interleave(
        rounds,
        {
            "one": functools.partial(_measure, events, _mesh, 1, 1),
            "many": functools.partial(_measure, events, _mesh, 1, TOPICS),
        },
    )
    many, one = medians["many"], medians["one"]
    section.rows.append(
        Row(
            name=f"{TOPICS:,} topics, one group each, {n:,} events",
            value=many.rate,
            unit="events/s",
            baseline=one.rate,
            baseline_name="the same events to one topic",
            goal="0.80x or more (within 20 % of one topic)",
            load=f"{many.load} (baseline {one.load})",
        )
    )
    section.notes += [
        f"{TOPICS:,} topics, rates of each round, {TOPICS:,} topics/one topic: "
        + ", ".join(
            f"{a.rate:,.0f}/{b.rate:,.0f}" for a, b in zip(many.rounds, one.rounds, strict=True)
        )
        + ".",
        f"Events are published in batches of {BATCH} to async handlers under the default "
        "delivery policy (concurrency 16, ordering by partition key, retries armed); a "
        "delivery counts once its handler returned and it was acked.",
        "events/s counts published events; with 10 groups each is delivered 10 times.",
        "The baseline is the least a Python loop can do: put each event on a bounded "
        "asyncio.Queue per group and take it off again, with no ack, ordering or retries.",
        f"With {TOPICS:,} topics, batch i goes to topic i mod {TOPICS:,}, each topic has one "
        "subscription (default policy), and the baseline is the same events through one "
        "topic; the subscriptions are made, and what making them left collected "
        "(gc.collect()), before the clock starts, in every setup.",
        f"Setups take turns, {rounds} rounds each (harness.interleave); each figure is the "
        "median, with the load average beside it. Reproduce: python benchmarks/run.py memory.",
    ]
    return section


TOPICS = 1_000


def _profile(quick: bool) -> str:
    events = _events(50_000 if quick else 200_000)
    uvloop.run(_mesh(events[:5_000], 1))
    profiler = cProfile.Profile()
    profiler.enable()
    uvloop.run(_mesh(events, 1, TOPICS if "--topics" in sys.argv else 1))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(30)
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(cli(__doc__, main, _profile, {"--topics": f"profile {TOPICS:,} topics, not one"}))
