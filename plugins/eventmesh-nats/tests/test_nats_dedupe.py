"""De-duplication on NATS: a topic's ``dedupe`` window becomes its stream's duplicate
window, and the ``Nats-Msg-Id`` (a bounded hash of source and id) lets JetStream keep one
copy of an event published through two meshes, which do not share their own windows."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from eventmesh import Event, Mesh
from eventmesh.errors import PublishError
from eventmesh_nats import NatsConnector

pytestmark = [pytest.mark.nats, pytest.mark.anyio]

MeshConfig = Callable[..., dict[str, Any]]


def with_dedupe(base: dict[str, Any], topic: str, window: str = "10m") -> dict[str, Any]:
    return {**base, "topics": {topic: {"dedupe": {"window": window}}}}


def _topic() -> str:
    return f"dedupe.{uuid.uuid4().hex[:10]}"


async def stream_of(mesh: Mesh, topic: str) -> tuple[NatsConnector, str]:
    connector = mesh.connector(topic)
    assert isinstance(connector, NatsConnector)
    return connector, connector.route(topic, PublishError)[1]


async def test_two_meshes_on_one_stream_store_an_event_once(mesh_config: MeshConfig) -> None:
    """The same event published through two meshes (each with an empty window of its
    own) is stored once: the stream was created with the topic's 10 minute window."""
    topic = _topic()
    config = with_dedupe(mesh_config(), topic)
    event = Event(type="t", source="/orders", id="o-1")
    async with Mesh(config) as first, Mesh(config) as second:
        assert await first.publish(topic, event) == ["o-1"]
        assert await second.publish(topic, [event, Event(type="t", source="/o", id="o-2")]) == [
            "o-1",
            "o-2",
        ]
        connector, stream = await stream_of(first, topic)
        info = await connector.js.stream_info(stream)
    assert info.config.duplicate_window == pytest.approx(600.0)
    assert info.state.messages == 2


async def test_the_message_id_is_short_and_tells_source_from_id(
    mesh_config: MeshConfig,
) -> None:
    """Nats-Msg-Id stays 32 characters for a 3,000-character source, and events whose
    source and id only join to the same text ('a b' + 'c', 'a' + 'b c') are both kept."""
    topic = _topic()
    long_source = "/" + "s" * 3000
    events = [
        Event(type="t", source="a b", id="c"),
        Event(type="t", source="a", id="b c"),
        Event(type="t", source=long_source, id="1"),
    ]
    async with Mesh(mesh_config()) as mesh:
        await mesh.publish(topic, events)
        connector, stream = await stream_of(mesh, topic)
        info = await connector.js.stream_info(stream)
        stored = [await connector.js.get_msg(stream, seq) for seq in (1, 2, 3)]
    assert info.state.messages == 3
    ids = [(msg.headers or {}).get("Nats-Msg-Id", "") for msg in stored]
    assert [len(i) for i in ids] == [32, 32, 32]
    assert len(set(ids)) == 3


async def test_the_window_is_cut_to_the_streams_max_age(mesh_config: MeshConfig) -> None:
    """A dedupe window longer than stream.max_age (which JetStream refuses) makes a stream
    whose duplicate window is max_age, and publishing works."""
    topic = _topic()
    base = mesh_config()
    base["connectors"]["default"]["stream"]["max_age"] = "1m"
    async with Mesh(with_dedupe(base, topic, "1h")) as mesh:
        await mesh.publish(topic, Event(type="t", source="/s", id="1"))
        connector, stream = await stream_of(mesh, topic)
        info = await connector.js.stream_info(stream)
    assert info.config.duplicate_window == pytest.approx(60.0)
    assert info.state.messages == 1


async def test_an_existing_stream_with_a_shorter_window_is_named_in_a_warning(
    mesh_config: MeshConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream made before the topic had dedupe keeps its 2 minute window (it is used as
    it is), and the connector warns that retries through other sidecars are caught only
    that long."""
    topic = _topic()
    async with Mesh(mesh_config()) as mesh:
        await mesh.publish(topic, Event(type="t", source="/s", id="1"))
    with caplog.at_level(logging.WARNING, logger="eventmesh_nats.jetstream"):
        async with Mesh(with_dedupe(mesh_config(), topic)) as mesh:
            await mesh.publish(topic, Event(type="t", source="/s", id="2"))
            connector, stream = await stream_of(mesh, topic)
            info = await connector.js.stream_info(stream)
    assert info.config.duplicate_window == pytest.approx(120.0)
    (warning,) = [r for r in caplog.records if "dedupe window" in r.getMessage()]
    assert stream in warning.getMessage()
    assert "120s, less than the topic's dedupe window of 600s" in warning.getMessage()


async def test_a_restarted_mesh_rebuilds_its_window_from_the_stream(
    mesh_config: MeshConfig,
) -> None:
    """With the stream's own de-duplication off (deduplicate: false), a retry after a
    restart is still dropped: the new mesh rebuilt its window from the stream."""
    topic = _topic()
    config = with_dedupe(mesh_config(deduplicate=False), topic)
    event = Event(type="t", source="/orders", id="o-1")
    async with Mesh(config) as mesh:
        await mesh.publish(topic, event)
    async with Mesh(config) as mesh:
        assert await mesh.publish(topic, [event, Event(type="t", source="/o", id="o-2")]) == [
            "o-1",
            "o-2",
        ]
        connector, stream = await stream_of(mesh, topic)
        info = await connector.js.stream_info(stream)
    assert info.state.messages == 2
