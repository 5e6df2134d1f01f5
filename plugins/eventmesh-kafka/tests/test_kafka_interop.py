"""eventmesh and plain Kafka clients on one broker: interop, crashes, rebalances, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cloudevents.core.bindings import kafka as sdk_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

import eventmesh
from eventmesh.connectors import Consumer
from eventmesh.errors import PublishError
from eventmesh.event import Event
from eventmesh.testing.polling import eventually
from eventmesh_kafka import KafkaConfig, KafkaConnector

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]

KAFKA_SH = Path(__file__).resolve().parents[3] / "scripts" / "kafka.sh"


def mesh_config(config: KafkaConfig, **options: Any) -> dict[str, Any]:
    """A mesh whose default connector is Kafka with the test connector's settings."""
    settings = {k: v for k, v in msgspec.structs.asdict(config).items() if v is not None}
    return {"connectors": {"default": {"type": "kafka", **settings, **options}}}


async def numbers_until(consumer: Consumer, needed: set[int], timeout: float) -> set[int]:
    """Fetch and ack until every number in ``needed`` arrived (or ``timeout`` passed)."""
    got: set[int] = set()
    with anyio.move_on_after(timeout):
        while not needed <= got:
            for delivery in await consumer.fetch(500, timeout=0.5):
                data = delivery.event.data
                if isinstance(data, dict) and "n" in data:
                    got.add(data["n"])
                await delivery.ack()
    return got


def numbered(count: int, *, keys: int = 10, tag: str = "n") -> list[Event]:
    """Events carrying their number, spread over ``keys`` partition keys."""
    return [
        Event(
            type="io.eventmesh.test",
            source="/interop",
            id=f"{tag}-{i}",
            data={"n": i},
            extensions={"partitionkey": f"k{i % keys}"},
        )
        for i in range(count)
    ]


@asynccontextmanager
async def plain_producer(bootstrap: str) -> AsyncIterator[Any]:
    """A bare aiokafka producer."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, count: int, timeout: float = 20) -> list[Any]:
    """``count`` records of ``topic`` from the start, read by a bare aiokafka consumer."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"reader-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        with anyio.move_on_after(timeout):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


# -- plain Kafka clients and the mesh ------------------------------------------------------


async def test_a_plain_producers_cloudevents_reach_mesh_subscribers(
    kafka_bootstrap: str, kafka_config: KafkaConfig, topic: str
) -> None:
    """Binary-mode CloudEvents from a bare aiokafka producer reach a handler and an iterator."""
    sent = [
        CloudEvent(
            attributes={
                "type": "com.example.order",
                "source": "/shop",
                "id": f"order-{i}",
                "datacontenttype": "application/json",
                "partitionkey": f"customer-{i % 3}",
            },
            data={"order": i},
        )
        for i in range(30)
    ]
    async with plain_producer(kafka_bootstrap) as producer:
        for event in sent:
            message = sdk_kafka.to_binary(event, JSONFormat())
            key = message.key.encode() if isinstance(message.key, str) else message.key
            await producer.send(
                topic, message.value, key=key, headers=list(message.headers.items())
            )
        await producer.flush()
    expected = {Event.from_cloudevent(e).id: Event.from_cloudevent(e) for e in sent}

    handled: dict[str, Event] = {}
    done = anyio.Event()

    async def handler(event: Event) -> None:
        handled[event.id] = event
        if len(handled) == len(sent):
            done.set()

    async with eventmesh.Mesh(mesh_config(kafka_config)) as mesh:
        async with mesh.subscribe(topic, "handlers", handler=handler, start="earliest"):
            with anyio.fail_after(30):
                await done.wait()
        iterated: dict[str, Event] = {}
        with anyio.fail_after(30):
            async with mesh.subscribe(topic, "iterators", start="earliest") as sub:
                async for delivery in sub:
                    iterated[delivery.event.id] = delivery.event
                    await delivery.ack()
                    if len(iterated) == len(sent):
                        break
    assert handled == expected
    assert iterated == expected
    assert handled["order-4"].partitionkey == "customer-1"


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_what_the_mesh_publishes_parses_with_the_sdk(
    kafka_bootstrap: str, kafka_config: KafkaConfig, topic: str, mode: str
) -> None:
    """A bare aiokafka consumer reads the mesh's records and the SDK parses them back."""
    sent = [
        *numbered(20),
        Event(type="t.text", source="/s", id="text", datacontenttype="text/plain", data="hé"),
        Event(type="t.none", source="/s", id="none", subject="nothing"),
    ]
    async with eventmesh.Mesh(mesh_config(kafka_config, mode=mode)) as mesh:
        await mesh.publish(topic, sent)
    records = await read_all(kafka_bootstrap, topic, len(sent))
    parsed = {}
    for record in records:
        message = sdk_kafka.KafkaMessage(
            headers=dict(record.headers), key=record.key, value=record.value or b""
        )
        event = Event.from_cloudevent(sdk_kafka.from_kafka(message, JSONFormat()))
        parsed[event.id] = event
        assert (record.key is None) == (event.partitionkey is None)
    assert parsed == {e.id: e for e in sent}


# -- crashes, rebalances and restarts --------------------------------------------------

_CRASHING_CONSUMER = textwrap.dedent(
    """
    import sys, anyio, eventmesh, json

    async def main():
        config = json.loads(sys.argv[1])
        async with eventmesh.Mesh(config) as mesh:
            async with mesh.subscribe(sys.argv[2], "crashy", start="earliest") as sub:
                print("ready", flush=True)
                async for delivery in sub:
                    await anyio.sleep(0.002)
                    print(delivery.event.data["n"], flush=True)
                    await delivery.ack()

    anyio.run(main)
    """
)


async def test_a_killed_consumer_loses_nothing(kafka_config: KafkaConfig, topic: str) -> None:
    """A member killed with SIGKILL mid-stream: its group still gets every event after restart."""
    total = 1_000
    config = mesh_config(kafka_config)
    async with eventmesh.Mesh(config) as mesh:
        await mesh.publish(topic, numbered(total))
    process = await anyio.open_process(
        [sys.executable, "-c", _CRASHING_CONSUMER, json.dumps(config), topic],
        stderr=subprocess.DEVNULL,
    )
    handled: set[int] = set()
    try:
        assert process.stdout is not None
        with anyio.fail_after(30):
            buffer = b""
            async for chunk in process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                handled.update(int(line) for line in lines if line.strip().isdigit())
                if len(handled) >= total // 3:
                    break
    finally:
        process.send_signal(signal.SIGKILL)
        await process.aclose()
    assert total // 3 <= len(handled) < total, "the consumer was not killed mid-stream"

    unhandled = set(range(total)) - handled
    async with KafkaConnector(kafka_config) as kafka, kafka.subscribe(topic, "crashy") as consumer:
        again = await numbers_until(consumer, unhandled, timeout=40)
    assert unhandled <= again, f"{len(unhandled - again)} events were never delivered"


async def test_two_meshes_share_a_group_through_a_rebalance(
    kafka_config: KafkaConfig, topic: str
) -> None:
    """Two meshes split one group's partitions; a third joins and leaves; nothing is lost."""
    seen: dict[str, dict[str, set[str]]] = {"a": {}, "b": {}, "c": {}}

    def recorder(name: str) -> Any:
        async def handler(event: Event) -> None:
            seen[name].setdefault(event.id, set()).add(str(event.partitionkey))

        return handler

    def ids() -> set[str]:
        return set().union(*(set(s) for s in seen.values()))

    async def until(expected: set[str]) -> None:
        await eventually(lambda: expected <= ids(), timeout=30, what="every id to arrive")

    config = mesh_config(kafka_config)
    async with eventmesh.Mesh(config) as a, eventmesh.Mesh(config) as b:
        await a.subscribe(topic, "shared", handler=recorder("a"), start="earliest")
        await b.subscribe(topic, "shared", handler=recorder("b"), start="earliest")
        first = numbered(400, keys=40, tag="first")
        await a.publish(topic, first)
        await until({e.id for e in first})
        keys_a = set().union(*seen["a"].values())
        keys_b = set().union(*seen["b"].values())
        assert keys_a, "mesh a got no partition"
        assert keys_b, "mesh b got no partition"
        assert keys_a.isdisjoint(keys_b), "one key went to both members"

        published: set[str] = {e.id for e in first}

        async def keep_publishing(tag: str, rounds: int) -> None:
            for r in range(rounds):
                batch = numbered(20, keys=40, tag=f"{tag}{r}")
                await b.publish(topic, batch)
                published.update(e.id for e in batch)
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_publishing, "during", 40)
            await anyio.sleep(0.3)
            async with eventmesh.Mesh(config) as c:
                await c.subscribe(topic, "shared", handler=recorder("c"), start="earliest")
                # The rebalance that gives c partitions takes a while: keep publishing
                # (bounded, 60 s at most) until c has handled some of it.
                for r in range(600):
                    if seen["c"]:
                        break
                    await keep_publishing(f"join{r}-", 1)
            await anyio.sleep(0.3)
        await keep_publishing("after", 5)
        await until(published)
    assert ids() == published
    assert seen["c"], "the third member never got work"


@pytest.mark.slow
async def test_a_broker_restart_loses_no_stored_event(
    kafka_bootstrap: str, kafka_config: KafkaConfig, topic: str
) -> None:
    """Events publish() reported stored while the broker restarted are all there afterwards."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        env = await anyio.run_process([str(KAFKA_SH), "env"], check=False)
        if f"KAFKA_BOOTSTRAP={kafka_bootstrap}" not in env.stdout.decode():
            pytest.skip("the broker is not one scripts/kafka.sh runs, so it cannot be restarted")
    config = msgspec.structs.replace(kafka_config, request_timeout_ms=5_000)
    stored: set[int] = set()
    restarted = anyio.Event()
    # When the broker process was gone (after stop returned, until start saw it ready), and
    # when each publish call was under way: the restart is proven by the broker's pid and
    # by a publish that was in flight while no broker ran, not by a publish that failed
    # (riding through the restart without an error is the good outcome).
    down: list[float] = []
    calls: list[tuple[float, float]] = []

    def broker(action: str) -> None:
        subprocess.run([str(KAFKA_SH), action], capture_output=True, timeout=180, check=True)

    def pid() -> str:
        return (KAFKA_SH.parents[1] / ".cache" / "kafka" / "run" / "server.pid").read_text()

    def restart() -> tuple[str, str]:
        before = pid()
        broker("stop")
        down.append(time.monotonic())
        broker("start")
        down.append(time.monotonic())
        return before, pid()

    pids: list[tuple[str, str]] = []

    async def restart_in_a_thread() -> None:
        pids.append(await anyio.to_thread.run_sync(restart))
        restarted.set()

    def batch(first: int) -> list[Event]:
        return [
            Event(type="t", source="/restart", id=f"r-{n}", data={"n": n})
            for n in range(first, first + 25)
        ]

    async with KafkaConnector(config) as kafka:
        await kafka.publish(topic, [Event(type="warm", source="/restart")])
        with anyio.fail_after(240):
            async with anyio.create_task_group() as tg:
                tg.start_soon(restart_in_a_thread)
                first, after = 0, 0
                while after < 20:  # keep going until well after the broker is back
                    events = batch(first)
                    began = time.monotonic()
                    try:
                        await kafka.publish(topic, events)
                    except PublishError:
                        await anyio.sleep(0.2)  # the same batch again: duplicates are allowed
                        continue
                    finally:
                        calls.append((began, time.monotonic()))
                    stored.update(range(first, first + 25))
                    first += 25
                    after += restarted.is_set()
                    await anyio.sleep(0.02)
        async with kafka.subscribe(topic, "audit", start="earliest") as consumer:
            found = await numbers_until(consumer, stored, timeout=60)
    assert stored - found == set(), f"{len(stored - found)} stored events are missing"
    ((before, after_pid),) = pids
    assert before != after_pid, "the broker kept its pid: it did not restart"
    gone, back = down
    assert any(began < back and ended > gone for began, ended in calls), (
        "no publish was under way while the broker was down"
    )
