"""The CloudEvents Java SDK's Kafka binding (io.cloudevents:cloudevents-kafka 4.0.1) and
the mesh on one real Kafka broker, both ways: records its producer writes (binary and
structured) reach a mesh subscription's webhook, and events published to the sidecar
reach its consumer (the connector writing binary or structured). Every attribute and
data byte is compared field by field, as the Java SDK wrote or read it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from _interop import (
    PAYLOADS,
    STRUCTURED,
    WAIT,
    Spec,
    assert_same_event,
    data_of,
    foreign,
    go_receiver,
    order,
    post_event,
    raw_sink,
    run,
    sidecar,
    sidecar_config,
    spec_from_http,
    spec_to_http,
    webhook,
)
from aiokafka import AIOKafkaConsumer

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]


def kafka(bootstrap: str, **options: Any) -> dict[str, Any]:
    """The sidecar's Kafka connector on the test broker, with fast group timings."""
    return {
        "type": "kafka",
        "bootstrap_servers": bootstrap,
        "partitions": 2,
        "request_timeout_ms": 10_000,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 300,
        **options,
    }


def events(exclude: tuple[str, ...] = ()) -> list[Spec]:
    """ORDER with each payload; one of them keyed (partitionkey is the record's key)."""
    specs = [order(name) for name in sorted(PAYLOADS) if name not in exclude]
    specs[0]["extensions"] = {**specs[0]["extensions"], "partitionkey": "customer-7"}
    return specs


def by_id(specs: list[Spec]) -> dict[str, Spec]:
    return {spec["id"]: spec for spec in specs}


@pytest.mark.parametrize("delivered", ["binary", "structured"])
@pytest.mark.parametrize("produced", ["binary", "structured"])
async def test_java_producer_records_reach_a_mesh_webhook_as_written(
    java_kafka: list[str], kafka_bootstrap: str, produced: str, delivered: str
) -> None:
    """Records the Java SDK's CloudEventSerializer writes in binary or structured mode,
    read by a mesh subscription on Kafka, reach its webhook with every attribute,
    extension and data byte the Java SDK put in (an event without data too)."""
    topic = f"interop-{uuid.uuid4().hex[:12]}"
    sent = events()
    async with raw_sink() as sink:
        config = sidecar_config(
            [webhook("java", topic, sink.url, mode=delivered)], kafka(kafka_bootstrap)
        )
        async with sidecar(config):
            lines = "".join(json.dumps(spec) + "\n" for spec in sent).encode()
            out = await run([*java_kafka, "produce", kafka_bootstrap, topic, produced], lines)
            assert json.loads(out.strip().splitlines()[-1]) == {"sent": len(sent)}
            got = [await sink.next() for _ in sent]
    seen = by_id([spec_from_http(request.headers, request.body) for request in got])
    assert sorted(seen) == sorted(by_id(sent))
    for spec in sent:
        assert_same_event(seen[spec["id"]], spec)


async def publish(url: str, specs: list[Spec], mode: str) -> None:
    """POST each spec to the sidecar in ``mode``; each is answered 202."""
    for spec in specs:
        await post_event(url, *spec_to_http(spec, mode))


async def java_consume(java_kafka: list[str], bootstrap: str, topic: str, count: int) -> list[Spec]:
    """The first ``count`` events of ``topic`` as the Java SDK's CloudEventDeserializer
    reads them."""
    command = [*java_kafka, "consume", bootstrap, topic, str(count)]
    async with foreign(command) as consumer:
        assert await consumer.line(WAIT) == "SUBSCRIBED"
        return [await consumer.spec(WAIT) for _ in range(count)]


async def records(bootstrap: str, topic: str, count: int) -> list[Any]:
    """The first ``count`` records of ``topic``, as a bare aiokafka consumer reads them."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    got: list[Any] = []
    try:
        with anyio.fail_after(WAIT):
            while len(got) < count:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(batch)
    finally:
        await consumer.stop()
    return got


@pytest.mark.parametrize("published", ["binary", "structured"])
@pytest.mark.parametrize("written", ["binary", "structured"])
async def test_events_published_to_the_mesh_reach_the_java_consumer_as_sent(
    java_kafka: list[str], kafka_bootstrap: str, written: str, published: str
) -> None:
    """Events published to a sidecar whose Kafka connector writes binary or structured
    records are read by the Java SDK's CloudEventDeserializer with every attribute,
    extension and data byte as published over HTTP (the record key is partitionkey).

    The Java SDK's structured reader re-encodes JSON data (Jackson: ``42.50`` becomes
    ``42.5``, a repeated key collapses) and takes ``"data": null`` for no data, though
    the JSON format calls it an explicit null payload; there its data is compared as a
    JSON value, and the record's own ``data`` member byte for byte."""
    topic = f"interop-{uuid.uuid4().hex[:12]}"
    sent = events(exclude=("no-data",))
    config = sidecar_config([], kafka(kafka_bootstrap, mode=written))
    async with sidecar(config) as running:
        await publish(f"{running.http_url}/topics/{topic}/events", sent, published)
    seen = by_id(await java_consume(java_kafka, kafka_bootstrap, topic, len(sent)))
    assert sorted(seen) == sorted(by_id(sent))
    structured = written == "structured"
    if structured:
        stored = [
            spec_from_http({"content-type": STRUCTURED}, r.value)
            for r in await records(kafka_bootstrap, topic, len(sent))
        ]
        for spec in sent:
            assert_same_event(by_id(stored)[spec["id"]], spec)
    for spec in sent:
        if structured and data_of(spec) == b"null":
            continue  # the Java SDK reads it as no data (see above)
        assert_same_event(seen[spec["id"]], spec, json_value=structured)
        assert seen[spec["id"]]["key"] == spec["extensions"].get("partitionkey")


async def test_an_event_without_data_reaches_the_java_consumer_with_empty_data(
    java_kafka: list[str], kafka_bootstrap: str
) -> None:
    """With ``empty_data: empty`` a binary-mode event without data is a record with an
    empty value, which the Java SDK's CloudEventDeserializer reads as an event without
    data (a null value it never sees, and a compacted topic takes for a tombstone)."""
    topic = f"interop-{uuid.uuid4().hex[:12]}"
    sent = [order("no-data"), order("json-null")]
    config = sidecar_config([], kafka(kafka_bootstrap, mode="binary", empty_data="empty"))
    async with sidecar(config) as running:
        await publish(f"{running.http_url}/topics/{topic}/events", sent, "binary")
    seen = by_id(await java_consume(java_kafka, kafka_bootstrap, topic, len(sent)))
    for spec in sent:
        assert_same_event(seen[spec["id"]], spec)


@pytest.mark.parametrize("produced", ["binary", "structured"])
async def test_java_producer_to_go_receiver_through_the_mesh(
    java_kafka: list[str], go_sdk: list[str], kafka_bootstrap: str, tmp_path: Path, produced: str
) -> None:
    """Two SDKs that never met: an event the Java SDK writes to Kafka, with a subject in
    UTF-8 beyond ASCII, reaches the Go SDK's webhook (binary, ``header_encoding: raw``)
    through a mesh subscription with every attribute, extension and data byte."""
    topic = f"interop-{uuid.uuid4().hex[:12]}"
    event = order("json-as-written", subject="orders/42 ünï")
    async with go_receiver(go_sdk, None, tmp_path) as (url, receiver):
        subscription = webhook("go", topic, url, mode="binary", header_encoding="raw")
        async with sidecar(sidecar_config([subscription], kafka(kafka_bootstrap))):
            line = (json.dumps(event) + "\n").encode()
            await run([*java_kafka, "produce", kafka_bootstrap, topic, produced], line)
            assert_same_event(await receiver.spec(), event)
