"""NATS routes: the core route and JetStream publishing, each against raw nats-py.

Needs a nats-server with JetStream: ``NATS_URL`` when set, else one started with
``scripts/nats.sh start`` (stop it afterwards with ``scripts/nats.sh stop``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import nats
import uvloop
from harness import Row, Section, best_of
from nats.js.api import StorageType, StreamConfig

from eventmesh import DeliveryPolicy, Event, Mesh
from eventmesh.bindings.nats import to_structured

TITLE = "NATS routes"
BATCH = 100
IN_FLIGHT = 100
PRODUCERS = 4
ROOT = Path(__file__).resolve().parent.parent


def _server() -> str:
    url = os.environ.get("NATS_URL")
    if url:
        return url
    done = subprocess.run(
        [str(ROOT / "scripts" / "nats.sh"), "start"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1].split("=", 1)[1]


def _events(n: int) -> list[Event]:
    return [Event(type="bench", source="/bench", data={"n": i}) for i in range(n)]


# -- core: publish -> subscriber ----------------------------------------------------------------


async def _raw_core(url: str, events: list[Event]) -> float:
    """The floor: the same bytes published in batches with a flush, counted in a callback."""
    messages = [to_structured(e) for e in events]
    subject = f"bench.raw.{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(url)
    total = len(messages)
    done = 0
    finished = asyncio.Event()

    async def callback(msg: object) -> None:
        nonlocal done
        done += 1
        if done == total:
            finished.set()

    await nc.subscribe(subject, queue="g", cb=callback, pending_msgs_limit=total + 1)
    await nc.flush()
    start = time.perf_counter()
    for i in range(0, total, BATCH):
        for headers, payload in messages[i : i + BATCH]:
            await nc.publish(subject, payload, headers=headers)
        await nc.flush()
    await asyncio.wait_for(finished.wait(), 60)
    elapsed = time.perf_counter() - start
    await nc.close()
    return total / elapsed


async def _mesh_core(url: str, events: list[Event]) -> float:
    """Events published in batches through a Mesh (core mode) to an async handler."""
    total = len(events)
    done = 0
    finished = asyncio.Event()

    async def handler(event: Event) -> None:
        nonlocal done
        done += 1
        if done == total:
            finished.set()

    config = {
        "connectors": {
            "default": {
                "type": "nats",
                "servers": [url],
                "mode": "core",
                "subject_prefix": "bench.",
                "core": {"buffer": total + 1, "pending_limit": total + 1},
            }
        }
    }
    topic = f"core.{uuid.uuid4().hex[:8]}"
    async with Mesh(config) as mesh:
        await mesh.subscribe(topic, "g", handler=handler, delivery=DeliveryPolicy())
        start = time.perf_counter()
        for i in range(0, total, BATCH):
            await mesh.publish(topic, events[i : i + BATCH])
        await asyncio.wait_for(finished.wait(), 60)
        elapsed = time.perf_counter() - start
    return total / elapsed


# -- JetStream: publish -> stream ack ------------------------------------------------------------


async def _raw_jetstream(url: str, events: list[Event]) -> float:
    """The floor: js.publish_async with at most IN_FLIGHT awaiting acks, the same bytes."""
    messages = [to_structured(e) for e in events]
    name = f"BENCH_RAW_{uuid.uuid4().hex[:8]}"
    subject = f"bench.js.{name}"
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=IN_FLIGHT)
    await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.FILE))
    try:
        start = time.perf_counter()
        futures = [
            await js.publish_async(subject, payload, headers=dict(headers))
            for headers, payload in messages
        ]
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - start
    finally:
        await js.delete_stream(name)
        await nc.close()
    return len(messages) / elapsed


async def _mesh_jetstream(url: str, events: list[Event]) -> float:
    """Events published in batches by PRODUCERS tasks through a Mesh (JetStream mode)."""
    prefix = f"BENCH{uuid.uuid4().hex[:8]}_"
    config = {
        "connectors": {
            "default": {
                "type": "nats",
                "servers": [url],
                "subject_prefix": "bench.",
                "stream": {"name_prefix": prefix},
                "max_in_flight": IN_FLIGHT,
            }
        }
    }
    topic = "jetstream"
    share = len(events) // PRODUCERS
    async with Mesh(config) as mesh:
        await mesh.publish(topic, events[:1])  # creates the stream outside the timing

        async def produce(part: list[Event]) -> None:
            for i in range(0, len(part), BATCH):
                await mesh.publish(topic, part[i : i + BATCH])

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for p in range(PRODUCERS):
                tg.create_task(produce(events[p * share : (p + 1) * share]))
        elapsed = time.perf_counter() - start
        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream(f"{prefix}{topic}")
        finally:
            await nc.close()
    return share * PRODUCERS / elapsed


def main(quick: bool) -> Section:
    url = _server()
    n = 20_000 if quick else 100_000
    events = _events(n)
    section = Section(TITLE)
    runs = 3
    raw = best_of(runs, lambda: uvloop.run(_raw_core(url, events)))
    mesh = best_of(runs, lambda: uvloop.run(_mesh_core(url, events)))
    section.rows.append(
        Row(
            name=f"core: publish to handler, {n:,} events",
            value=mesh,
            unit="events/s",
            baseline=raw,
            baseline_name="raw nats-py bridge",
            goal="85,000 events/s or more, and half the raw bridge rate or better",
        )
    )
    raw = best_of(runs, lambda: uvloop.run(_raw_jetstream(url, events)))
    mesh = best_of(runs, lambda: uvloop.run(_mesh_jetstream(url, events)))
    section.rows.append(
        Row(
            name=f"JetStream: publish to stream ack, {n:,} events",
            value=mesh,
            unit="events/s",
            baseline=raw,
            baseline_name=f"raw js.publish_async, {IN_FLIGHT} in flight",
            goal="25,000 events/s or more, and 70 % of raw pipelined publishing or better",
        )
    )
    section.notes += [
        "One nats-server 2.9 on 127.0.0.1 (scripts/nats.sh), file storage; eventmesh's "
        f"binding is structured (the default). Events are published in batches of {BATCH}.",
        "Core route: one Mesh (one connection) publishes and a handler in the same "
        "process receives, under the default delivery policy; a publish returns after a "
        "flush; core.buffer is raised to hold a whole run, so no message is dropped. The "
        "raw bridge sends the same pre-encoded bytes over one connection, flushing each "
        "batch, and counts them in a subscription callback.",
        f"JetStream: {PRODUCERS} tasks publish through one Mesh; each publish returns once "
        f"the stream acked every event (the connector keeps at most {IN_FLIGHT} awaiting "
        "an ack, on its own reply inbox). The raw baseline is nats-py's own pipelining, "
        f"js.publish_async with publish_async_max_pending={IN_FLIGHT}, on the same bytes.",
    ]
    return section
