"""What Kafka can never store is refused with 400 before anything is sent (topic names
outside Kafka's rule, records above the size limits, data nested too deep), never the
503 a producer is told to retry."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import msgspec
import pytest

from eventmesh import Event, Mesh
from eventmesh._status import http_status
from eventmesh.bindings.http import to_binary
from eventmesh.errors import EventValidationError, RejectedError
from eventmesh.server.sidecar import Sidecar
from eventmesh_kafka import KafkaConfig

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]


def _connectors(config: KafkaConfig, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = msgspec.to_builtins(config)
    settings.update(overrides)
    return {"default": {"type": "kafka", **settings}}


def _nested(depth: int) -> list[Any]:
    """A list ``depth`` deep (``[[]]`` is 2), built without recursion."""
    data: list[Any] = []
    for _ in range(depth - 1):
        data = [data]
    return data


def _event(data: Any = 1, **fields: Any) -> Event:
    return Event(type="com.example.rule", source="/test", data=data, **fields)


async def _first(mesh: Mesh, topic: str) -> Event:
    """The oldest event stored on ``topic`` (a new group from the start)."""
    with anyio.fail_after(30):
        async with mesh.subscribe(topic, f"reader-{uuid.uuid4().hex[:8]}", start="earliest") as sub:
            async for delivery in sub:
                await delivery.ack()
                return delivery.event
    raise AssertionError("unreachable")


async def test_topic_names_kafka_refuses_are_400_through_the_sidecar(
    kafka_config: KafkaConfig,
) -> None:
    """A space, non-ASCII letters, a colon or 300 characters: 400 RejectedError naming
    the rule (not 503), while a good name on the same sidecar is stored (202)."""
    config = {
        "connectors": _connectors(kafka_config),
        "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
    }
    headers, body = to_binary(_event())
    timeout = aiohttp.ClientTimeout(total=30)
    async with Sidecar(config) as sidecar, aiohttp.ClientSession(timeout=timeout) as session:

        async def post(topic: str) -> tuple[int, Any]:
            url = f"{sidecar.http_url}/topics/{quote(topic, safe='')}/events"
            async with session.post(url, headers=headers, data=body) as response:
                return response.status, await response.json(content_type=None)

        for bad, rule in [
            ("bad topic", "not a valid Kafka topic name"),
            ("ünï", "not a valid Kafka topic name"),
            ("orders:created", "not a valid Kafka topic name"),
            ("x" * 300, "limits.max_name_length"),
        ]:
            status, problem = await post(bad)
            assert (status, problem["type"]) == (400, "RejectedError"), bad
            assert rule in problem["detail"]
        status, _ = await post(f"test-rules-{uuid.uuid4().hex[:8]}")
        assert status == 202


async def test_kafkas_own_length_rule_applies_under_a_larger_mesh_bound(
    kafka_config: KafkaConfig,
) -> None:
    """With limits.max_name_length above 249, Kafka's own 249 still refuses the name,
    as RejectedError from the connector's check, before any request to the broker."""
    config = {"connectors": _connectors(kafka_config), "limits": {"max_name_length": 1000}}
    async with Mesh(config) as mesh:
        with pytest.raises(RejectedError, match="249") as info:
            await mesh.publish("y" * 300, _event())
        assert http_status(info.value) == 400
        for bad in ("a b", "..", "ünï"):
            with pytest.raises(RejectedError, match="not a valid Kafka topic name"):
                mesh.subscribe(bad, "g")
        assert mesh.topics == []


async def test_an_event_above_max_request_size_is_rejected_before_any_is_sent(
    kafka_config: KafkaConfig, topic: str
) -> None:
    """A call holding one record larger than max_request_size raises RejectedError and
    stores none of its events, not even the small one before it."""
    config = {"connectors": _connectors(kafka_config, max_request_size=20_000)}
    async with Mesh(config) as mesh:
        with pytest.raises(RejectedError, match="max_request_size"):
            await mesh.publish(topic, [_event("small"), _event("x" * 30_000)])
        await mesh.publish(topic, _event("marker"))
        assert (await _first(mesh, topic)).data == "marker"


async def test_a_record_the_broker_finds_too_large_is_rejected(
    kafka_config: KafkaConfig, topic: str
) -> None:
    """A record the producer lets through but the broker refuses as too large (above its
    message.max.bytes, about 1 MB by default) is RejectedError, not a retryable
    PublishError."""
    config = {"connectors": _connectors(kafka_config, max_request_size=4_000_000)}
    async with Mesh(config) as mesh:
        with pytest.raises(RejectedError) as info:
            await mesh.publish(topic, _event(b"x" * 2_000_000, datacontenttype="a/b"))
        assert http_status(info.value) == 400
        await mesh.publish(topic, _event("after"))  # the producer still works
        assert (await _first(mesh, topic)).data == "after"


async def test_data_nested_too_deep_is_refused_as_on_memory(
    kafka_config: KafkaConfig, topic: str
) -> None:
    """Data nested 985 deep is EventValidationError on data (400), never a 500 from the
    encoder; 64 deep is stored and read back."""
    deep, fine = _nested(985), _nested(64)
    async with Mesh({"connectors": _connectors(kafka_config)}) as mesh:
        with pytest.raises(EventValidationError) as info:
            await mesh.publish(topic, _event(deep))
        assert info.value.attribute == "data"
        await mesh.publish(topic, _event(fine))
        assert (await _first(mesh, topic)).data == fine


async def test_a_name_colliding_with_an_existing_topic_is_rejected(
    kafka_config: KafkaConfig,
) -> None:
    """Kafka refuses a topic differing from an existing one only by '.' against '_': the
    broker's InvalidTopicError is RejectedError (400), not a retryable PublishError."""
    suffix = uuid.uuid4().hex[:8]
    async with Mesh({"connectors": _connectors(kafka_config)}) as mesh:
        await mesh.publish(f"rules.{suffix}", _event())
        with pytest.raises(RejectedError, match="collides"):
            await mesh.publish(f"rules_{suffix}", _event())
