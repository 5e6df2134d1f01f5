"""Every event arrives as it was sent, through a real Kafka broker (issue 16): HTTP in,
Kafka, webhook out byte for byte with the time's nanoseconds; the empty_data option."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from eventmesh import Event
from eventmesh.server.sidecar import Sidecar
from eventmesh_kafka import KafkaConfig, KafkaConnector

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]

BODY = b'{ "b" : 1, "b": -0, "s": "caf\\u00e9", "n": 12345678901234567890123 }'
NANO_TIME = "2024-05-01T12:00:00.123456789Z"
HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "kafka-fid-1",
    "ce-source": "/fidelity",
    "ce-type": "com.example.fidelity",
    "ce-time": NANO_TIME,
    "ce-subject": "orders/42%20%C3%BCn%C3%AF",
    "content-type": "application/json",
}


@asynccontextmanager
async def webhook() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A webhook on 127.0.0.1 that keeps each request's headers and body."""
    got: list[tuple[dict[str, str], bytes]] = []

    async def sink(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/events", sink)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/events", got
    finally:
        await runner.cleanup()


def connector_settings(config: KafkaConfig, **options: Any) -> dict[str, Any]:
    settings = {k: v for k, v in msgspec.structs.asdict(config).items() if v is not None}
    return {"type": "kafka", **settings, **options}


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_http_in_kafka_http_out_byte_for_byte(kafka_config: KafkaConfig, mode: str) -> None:
    """A JSON body published over HTTP is stored in Kafka (either mode) and pushed to a
    webhook as the very bytes published, its time with all nine digits."""
    topic = f"test-fid-{uuid.uuid4().hex[:12]}"
    async with webhook() as (url, got):
        config = {
            "connectors": {"default": connector_settings(kafka_config, mode=mode)},
            "subscriptions": [
                {"name": "fid", "topic": topic, "start": "earliest", "sink": {"webhook": url}}
            ],
            "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
        }
        async with Sidecar(config) as sidecar, aiohttp.ClientSession() as session:
            async with session.post(
                f"{sidecar.http_url}/topics/{topic}/events", headers=HEADERS, data=BODY
            ) as answer:
                assert answer.status == 202, await answer.text()
            with anyio.fail_after(60):
                while not got:
                    await anyio.sleep(0.05)
    headers, body = got[0]
    assert body == BODY
    assert headers["ce-time"] == NANO_TIME
    assert headers["ce-subject"] == HEADERS["ce-subject"]


async def read_values(bootstrap: str, topic: str, count: int) -> list[bytes | None]:
    """The values of the first ``count`` records of ``topic``, read by plain aiokafka."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"reader-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes | None] = []
    try:
        with anyio.fail_after(30):
            while len(values) < count:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    values.extend(record.value for record in batch)
    finally:
        await consumer.stop()
    return values


@pytest.mark.parametrize(("empty_data", "value"), [("null", None), ("empty", b"")])
async def test_empty_data_option(
    kafka_config: KafkaConfig, topic: str, empty_data: Any, value: bytes | None
) -> None:
    """An event without data (with a key: aiokafka writes a record with neither key nor
    value as an empty value anyway) is a null-value record by default and an empty
    value with empty_data: empty; the mesh reads either back as an event without data."""
    config = msgspec.structs.replace(kafka_config, empty_data=empty_data)
    event = Event(type="t", source="/s", id="no-data", extensions={"partitionkey": "k"})
    async with KafkaConnector(config) as kafka:
        await kafka.publish(topic, [event])
        async with kafka.subscribe(topic, "g", start="earliest") as consumer:
            with anyio.fail_after(30):
                deliveries: list[Any] = []
                while not deliveries:
                    deliveries = await consumer.fetch(10, timeout=0.5)
            assert deliveries[0].event.data is None
            assert deliveries[0].event.id == "no-data"
            await deliveries[0].ack()
    assert await read_values(kafka_config.bootstrap_servers, topic, 1) == [value]
