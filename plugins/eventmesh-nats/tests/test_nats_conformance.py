"""The NATS connector passes the conformance kit in both modes, against a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from eventmesh.testing import ConnectorConformance
from eventmesh_nats import NatsConfig, NatsConnector, StreamSettings

pytestmark = pytest.mark.nats


class TestNatsJetStreamConformance(ConnectorConformance):
    """The whole kit against JetStream mode (file storage, as in production)."""

    timeout = 20.0
    quiet = 0.5
    invalid_topic = "bad topic"

    @pytest.fixture
    async def connector(self, nats_url: str, stream_prefix: str) -> AsyncIterator[NatsConnector]:
        """A JetStream-mode connector whose streams this session deletes afterwards."""
        config = NatsConfig(
            servers=[nats_url],
            mode="jetstream",
            subject_prefix=f"{stream_prefix.lower()}.",
            stream=StreamSettings(name_prefix=stream_prefix),
        )
        async with NatsConnector(config) as connector:
            yield connector

    @pytest.fixture
    def reopen(self, nats_url: str, stream_prefix: str) -> Callable[[], NatsConnector]:
        """A second connector on the same server and streams, for the durability case."""
        config = NatsConfig(
            servers=[nats_url],
            mode="jetstream",
            subject_prefix=f"{stream_prefix.lower()}.",
            stream=StreamSettings(name_prefix=stream_prefix),
        )
        return lambda: NatsConnector(config)


class TestNatsCoreConformance(ConnectorConformance):
    """The kit against core mode: the promises it claims (no durability, no replay)."""

    timeout = 20.0
    quiet = 0.5
    invalid_topic = "a.>.b"

    @pytest.fixture
    async def connector(self, nats_url: str, stream_prefix: str) -> AsyncIterator[NatsConnector]:
        """A core-mode connector on its own subject namespace."""
        config = NatsConfig(
            servers=[nats_url],
            mode="core",
            binding="binary",
            subject_prefix=f"{stream_prefix.lower()}core.",
        )
        async with NatsConnector(config) as connector:
            yield connector
