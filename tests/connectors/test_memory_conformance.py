"""The memory connector passes the conformance kit it ships for plugin authors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eventmesh.connectors.memory import MemoryConfig, MemoryConnector
from eventmesh.testing import ConnectorConformance

pytestmark = pytest.mark.core  # CI runs these on the core alone


class TestMemoryConformance(ConnectorConformance):
    """The whole kit against the in-memory connector."""

    timeout = 10.0
    quiet = 0.3
    stress_events = 25_000

    @pytest.fixture
    async def connector(self) -> AsyncIterator[MemoryConnector]:
        """A fresh memory connector with four partitions per topic."""
        async with MemoryConnector(MemoryConfig(partitions=4)) as connector:
            yield connector
