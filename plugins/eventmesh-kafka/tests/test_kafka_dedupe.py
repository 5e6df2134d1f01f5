"""De-duplication on Kafka is the mesh's own window, per sidecar process: a mesh that
starts rebuilds it from what the topic holds (read() without a group), so a producer's
retry after a restart is still dropped."""

from __future__ import annotations

from typing import Any

import pytest

from eventmesh import Event, Mesh
from eventmesh_kafka import KafkaConfig, KafkaConnector

pytestmark = pytest.mark.anyio


def config(topic: str) -> dict[str, Any]:
    return {"topics": {topic: {"dedupe": {"window": "10m"}}}}


async def test_a_restarted_mesh_drops_a_retry_of_what_it_stored(
    kafka_config: KafkaConfig, topic: str
) -> None:
    """Events stored before a restart are in the new mesh's window: a retry of one is
    answered with its id and not stored again, while a new event is stored."""
    first = [Event(type="t", source="/orders", id=f"o-{i}") for i in range(3)]
    async with Mesh(config(topic), connectors={"default": KafkaConnector(kafka_config)}) as mesh:
        await mesh.publish(topic, first)
    async with Mesh(config(topic), connectors={"default": KafkaConnector(kafka_config)}) as mesh:
        retry = [first[1], Event(type="t", source="/orders", id="o-new")]
        assert await mesh.publish(topic, retry) == ["o-1", "o-new"]
        held = await mesh.connector(topic).read(topic, limit=100)
    assert sorted(s.event.id for s in held) == ["o-0", "o-1", "o-2", "o-new"]
