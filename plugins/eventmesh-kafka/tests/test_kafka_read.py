"""The Kafka connector browses a topic without a group: nothing is committed or consumed."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from eventmesh.testing.browsing import check_read
from eventmesh_kafka import KafkaConnector

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
