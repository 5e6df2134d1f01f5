"""The local store against the memory connector, in the same run: batched publish, and
the route from publish to acked delivery.

    python benchmarks/bench_local.py [--quick] [--profile]
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from typing import Any

import uvloop
from harness import Row, Section, best_of, cli

from eventmesh import DeliveryPolicy, Event, Mesh

TITLE = "Local store (SQLite) against memory"
PUBLISHERS = 8
PUBLISH_BATCH = 1_000
ROUTE_BATCH = 100


def _events(n: int) -> list[Event]:
    return [
        Event(
            type="bench",
            source="/bench",
            data={"n": i},
            extensions={"partitionkey": f"k{i % 64}"},
        )
        for i in range(n)
    ]


def _config(kind: str, data_dir: str, fsync: str = "batch") -> dict[str, Any]:
    if kind == "memory":
        return {"connectors": {"default": {"type": "memory", "max_events": 1_000_000}}}
    return {"connectors": {"default": {"type": "local", "data_dir": data_dir, "fsync": fsync}}}


async def _publish_all(mesh: Mesh, events: list[Event], batch: int) -> None:
    """``PUBLISHERS`` tasks publish their share of ``events`` in batches, concurrently."""
    share = len(events) // PUBLISHERS

    async def producer(part: list[Event]) -> None:
        for i in range(0, len(part), batch):
            await mesh.publish("bench", part[i : i + batch])

    await asyncio.gather(
        *(producer(events[k * share : (k + 1) * share]) for k in range(PUBLISHERS))
    )


async def _publish(kind: str, events: list[Event], fsync: str = "batch") -> float:
    data_dir = tempfile.mkdtemp(prefix="bench-local-")
    try:
        async with Mesh(_config(kind, data_dir, fsync)) as mesh:
            await mesh.publish("bench", events[:10])  # the topic exists before the clock
            start = time.perf_counter()
            await _publish_all(mesh, events, PUBLISH_BATCH)
            return len(events) / (time.perf_counter() - start)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _route(kind: str, events: list[Event]) -> float:
    total = len(events)
    done = 0
    finished = asyncio.Event()

    async def handler(event: Event) -> None:
        nonlocal done
        done += 1
        if done == total:
            finished.set()

    data_dir = tempfile.mkdtemp(prefix="bench-local-")
    try:
        async with Mesh(_config(kind, data_dir)) as mesh:
            sub = await mesh.subscribe("bench", "g", handler=handler, delivery=DeliveryPolicy())
            start = time.perf_counter()
            await _publish_all(mesh, events, ROUTE_BATCH)
            await finished.wait()
            elapsed = time.perf_counter() - start
            assert sub.stats.delivered == total
        return total / elapsed
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main(quick: bool) -> Section:
    n = 50_000 if quick else 200_000
    events = _events(n)
    section = Section(TITLE)
    load = os.getloadavg()
    memory = best_of(3, lambda: uvloop.run(_publish("memory", events)))
    for fsync in ("batch", "always", "interval"):
        local = best_of(3, lambda f=fsync: uvloop.run(_publish("local", events, f)))  # type: ignore[misc]
        section.rows.append(
            Row(
                name=f"publish {n:,} events, batches of {PUBLISH_BATCH}, fsync {fsync}",
                value=local,
                unit="events/s",
                baseline=memory,
                baseline_name="memory connector",
                goal="100,000 events/s or more" if fsync == "batch" else "",
            )
        )
    count = n // 2
    sample = events[:count]
    memory = best_of(3, lambda: uvloop.run(_route("memory", sample)))
    local = best_of(3, lambda: uvloop.run(_route("local", sample)))
    section.rows.append(
        Row(
            name=f"publish to acked delivery, 1 group, {count:,} events",
            value=local,
            unit="events/s",
            baseline=memory,
            baseline_name="memory connector",
            goal="50 % of memory or better",
        )
    )
    after = os.getloadavg()
    section.notes += [
        f"{PUBLISHERS} tasks publish concurrently through a Mesh (publish in batches of "
        f"{PUBLISH_BATCH}, the route in batches of {ROUTE_BATCH}); a publish returns once "
        "stored: for the local store, committed to SQLite (WAL) and, under fsync batch and "
        "always, fsynced. Events carry 64 partition keys; each is about 200 bytes encoded.",
        "The route: one Mesh subscription with an async handler under the default delivery "
        "policy; the rate runs from the first publish to the last acked delivery.",
        "The data directory is a fresh one under the system's temp dir (same disk as the "
        "repo); an fsync there takes about 2 ms. Each figure is the best of 3 runs.",
        f"Load average (1, 5, 15 min) before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f} (2 cores shared with "
        "other work).",
    ]
    return section


def profile(quick: bool) -> str:
    events = _events(50_000 if quick else 100_000)
    profiler = cProfile.Profile()
    profiler.enable()
    uvloop.run(_route("local", events))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(cli(__doc__ or "", main, profile))
