"""The Kafka connector passes the connector conformance kit against a real broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import msgspec
import pytest

from eventmesh.testing import ConnectorConformance
from eventmesh_kafka import KafkaConfig, KafkaConnector

pytestmark = pytest.mark.kafka


class TestKafkaConformance(ConnectorConformance):
    """The whole kit against Kafka: topics of 4 partitions, created on first use."""

    timeout = 20.0
    quiet = 1.0
    invalid_topic = "bad topic!"  # a space and '!': Kafka allows only [A-Za-z0-9._-]
    stress_events = 10_000  # 40,000 events in all: a few seconds on a 2-core machine

    @pytest.fixture
    async def connector(self, kafka_config: KafkaConfig) -> AsyncIterator[KafkaConnector]:
        """An open Kafka connector that creates topics with four partitions."""
        config = msgspec.structs.replace(kafka_config, create_topics=True, partitions=4)
        async with KafkaConnector(config) as connector:
            yield connector

    @pytest.fixture
    def reopen(self, kafka_config: KafkaConfig) -> Callable[[], KafkaConnector]:
        """A second connector on the same cluster, for the durability case."""
        config = msgspec.structs.replace(kafka_config, create_topics=True, partitions=4)
        return lambda: KafkaConnector(config)
