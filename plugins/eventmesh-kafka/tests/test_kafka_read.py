"""The Kafka connector browses a topic without a group: nothing is committed or consumed."""

from __future__ import annotations

import anyio
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from eventmesh import Event, Mesh
from eventmesh.delivery.deadletter import dead_letter_event
from eventmesh.testing.browsing import check_read
from eventmesh_kafka import KafkaConfig, KafkaConnector

pytestmark = pytest.mark.anyio


async def test_read_pages_filters_by_time_and_consumes_nothing(
    kafka: KafkaConnector, topic: str
) -> None:
    """read() on Kafka passes the browsing check (cursor paging, since, limit, and a group
    that joins afterwards at 'earliest' gets every event)."""
    await check_read(kafka, topic, timeout=120)


async def test_a_topic_that_does_not_exist_reads_empty_and_is_not_created(
    kafka: KafkaConnector, kafka_bootstrap: str, topic: str
) -> None:
    """Browsing a missing topic returns [] without creating it."""
    assert await kafka.read(topic) == []
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()


async def test_a_replay_is_recorded_in_kafka_and_not_repeated_after_a_restart(
    kafka_config: KafkaConfig, topic: str
) -> None:
    """Replayed dead letters are recorded in the connector's state (a compacted topic),
    so a mesh started afresh skips them; the replayed events reach the original topic
    without deadletter* extensions."""
    event = Event(type="t", source="/s", id=f"{topic}-1")
    letter = dead_letter_event(
        event, reason="failed", error="E: x", attempts=1, topic=topic, group="billing"
    )
    with anyio.fail_after(120):
        async with Mesh(connectors={"default": KafkaConnector(kafka_config)}) as mesh:
            await mesh.publish(f"{topic}.dlq", letter)
            done = await mesh.dead_letters(f"{topic}.dlq").replay()
            assert done.ids == [event.id]
        async with Mesh(connectors={"default": KafkaConnector(kafka_config)}) as mesh:
            again = await mesh.dead_letters(f"{topic}.dlq").replay()
            assert (again.replayed, again.skipped) == (0, 1)
            [stored] = (await mesh.dead_letters(topic).list()).events
            assert stored.event.id == event.id
            assert "deadletterreason" not in stored.event.extensions
