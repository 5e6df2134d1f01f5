"""What NATS can never store is refused with 400 before anything is sent (topics that
cannot be a subject or make too long a stream name, messages above the server's
max_payload, data nested too deep), never the 503 a producer is told to retry."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest

from eventmesh import Event, Mesh
from eventmesh._status import http_status
from eventmesh.bindings.http import to_binary
from eventmesh.errors import EventValidationError, RejectedError
from eventmesh.server.sidecar import Sidecar

pytestmark = [pytest.mark.nats, pytest.mark.anyio]

MeshConfig = Callable[..., dict[str, Any]]


def _nested(depth: int) -> list[Any]:
    """A list ``depth`` deep (``[[]]`` is 2), built without recursion."""
    data: list[Any] = []
    for _ in range(depth - 1):
        data = [data]
    return data


def _event(data: Any = 1, **fields: Any) -> Event:
    return Event(type="com.example.rule", source="/test", data=data, **fields)


def _topic() -> str:
    return f"rules.{uuid.uuid4().hex[:12]}"


async def _first(mesh: Mesh, topic: str) -> Event:
    """The oldest event stored on ``topic`` (a new group from the start)."""
    with anyio.fail_after(30):
        async with mesh.subscribe(topic, f"reader-{uuid.uuid4().hex[:8]}", start="earliest") as sub:
            async for delivery in sub:
                await delivery.ack()
                return delivery.event
    raise AssertionError("unreachable")


async def test_topics_that_cannot_be_subjects_are_400_through_the_sidecar(
    mesh_config: MeshConfig,
) -> None:
    """An empty token, '*', '>', a space or non-ASCII: 400 RejectedError naming the rule
    (not 503), while a good topic on the same sidecar is stored (202)."""
    config = {
        **mesh_config(),
        "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
    }
    headers, body = to_binary(_event())
    timeout = aiohttp.ClientTimeout(total=30)
    async with Sidecar(config) as sidecar, aiohttp.ClientSession(timeout=timeout) as session:

        async def post(topic: str) -> tuple[int, Any]:
            url = f"{sidecar.http_url}/topics/{quote(topic, safe='')}/events"
            async with session.post(url, headers=headers, data=body) as response:
                return response.status, await response.json(content_type=None)

        for bad in ("a..b", "*", "orders.>", "bad topic", "ünï"):
            status, problem = await post(bad)
            assert (status, problem["type"]) == (400, "RejectedError"), bad
            assert "cannot be a NATS subject" in problem["detail"]
        status, _ = await post(_topic())
        assert status == 202


async def test_a_topic_whose_stream_name_is_too_long_is_rejected(
    mesh_config: MeshConfig,
) -> None:
    """A topic that is a fine subject but makes a JetStream stream name above 200
    characters is refused on publish and on subscribe, before any request to NATS."""
    async with Mesh(mesh_config()) as mesh:
        with pytest.raises(RejectedError, match="stream name") as info:
            await mesh.publish("s" * 240, _event())
        assert http_status(info.value) == 400
        with pytest.raises(RejectedError, match="stream name"):
            mesh.subscribe("t" * 240, "g")
        assert mesh.topics == []


async def test_a_message_above_max_payload_is_rejected_and_the_connection_lives(
    mesh_config: MeshConfig,
) -> None:
    """An event larger than the server's max_payload (1 MB by default) is RejectedError
    before anything of the call is sent, and the connection keeps working after it."""
    topic = _topic()
    async with Mesh(mesh_config()) as mesh:
        with pytest.raises(RejectedError, match="max_payload"):
            await mesh.publish(topic, [_event("small"), _event("x" * 1_500_000)])
        await mesh.publish(topic, _event("marker"))
        assert (await _first(mesh, topic)).data == "marker"


async def test_data_nested_too_deep_is_refused_as_on_memory(mesh_config: MeshConfig) -> None:
    """Data nested 985 deep is EventValidationError on data (400), never a 500 from the
    encoder; 64 deep is stored and read back."""
    topic = _topic()
    deep, fine = _nested(985), _nested(64)
    async with Mesh(mesh_config()) as mesh:
        with pytest.raises(EventValidationError) as info:
            await mesh.publish(topic, _event(deep))
        assert info.value.attribute == "data"
        await mesh.publish(topic, _event(fine))
        assert (await _first(mesh, topic)).data == fine
