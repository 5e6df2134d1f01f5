"""The sidecar over a real Kafka broker: a shutdown in the middle of a publish run loses
nothing it acknowledged, and commits what its subscription acked."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import anyio
import pytest

from eventmesh import Event, Mesh
from eventmesh.bindings.http import to_binary
from eventmesh.server.sidecar import Sidecar

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]

handled: list[str] = []
"""Ids the configured subscription acked, in the run that is going on."""


async def record(event: Event) -> None:
    """The configured handler: note the event (it is acked when this returns)."""
    await anyio.sleep(0.02)
    handled.append(event.id)


def sidecar_config(bootstrap: str, topic: str) -> dict[str, Any]:
    kafka = {
        "type": "kafka",
        "bootstrap_servers": bootstrap,
        "partitions": 4,
        "request_timeout_ms": 10_000,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 300,
    }
    return {
        "connectors": {"default": kafka},
        "subscriptions": [
            {
                "name": "audit",
                "topic": topic,
                "group": "audit",
                "start": "earliest",
                "sink": {"handler": "test_kafka_sidecar:record"},
            }
        ],
        "server": {
            "http": {"port": 0},
            "grpc": {"port": 0},
            "admin": {"port": 0},
            "shutdown_timeout": "20s",
        },
    }


async def publish_until_refused(url: str, accepted: list[str], name: str, limit: int) -> None:
    """POST one event per request until the sidecar stops answering; note each 202."""
    async with aiohttp.ClientSession() as session:
        for n in range(limit):
            event = Event(type="com.example.audit", source="/test", id=f"{name}-{n}", data=n)
            headers, body = to_binary(event)
            try:
                async with session.post(url, headers=headers, data=body) as response:
                    await response.read()
                    if response.status != 202:
                        return  # 503 while closing: the event was not taken
            except aiohttp.ClientError:
                return  # the listener is closed
            accepted.append(event.id)


async def test_shutdown_mid_publish_keeps_every_accepted_event_and_commits_the_acked(
    kafka_bootstrap: str,
) -> None:
    """Close the sidecar while a client publishes: every event answered 202 is in Kafka,
    and a new member of the group gets every accepted event the first run did not ack, and
    none that it did."""
    topic = f"test-sidecar-{uuid.uuid4().hex[:12]}"
    config = sidecar_config(kafka_bootstrap, topic)
    accepted: list[str] = []
    handled.clear()
    async with anyio.create_task_group() as tg:
        sidecar = Sidecar(config)
        await sidecar.__aenter__()
        try:
            url = f"{sidecar.http_url}/topics/{topic}/events"
            for name in ("a", "b", "c", "d"):  # requests in flight when the close begins
                tg.start_soon(publish_until_refused, url, accepted, name, 2_000)
            with anyio.fail_after(60):
                while len(handled) < 200:  # the subscription is working through them
                    await anyio.sleep(0.01)
        finally:
            await sidecar.close()
    first_run = set(handled)
    assert len(accepted) >= 200
    assert first_run <= set(accepted)

    # Everything acknowledged to the publisher is stored: a new group reads it all back.
    stored: set[str] = set()
    async with (
        Mesh({"connectors": config["connectors"]}) as mesh,
        mesh.subscribe(topic, group="reader", start="earliest") as reader,
    ):
        with anyio.fail_after(60):
            async for delivery in reader:
                stored.add(delivery.event.id)
                await delivery.ack()
                if stored >= set(accepted):
                    break
    assert set(accepted) <= stored

    # The same group resumes after what the first run acked: the rest, and nothing acked.
    handled.clear()
    rest = set(accepted) - first_run
    async with Sidecar(config):
        with anyio.fail_after(60):
            while not rest <= set(handled):
                await anyio.sleep(0.02)
    assert not first_run & set(handled)
