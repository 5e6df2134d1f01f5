"""The local connector passes the whole conformance kit, durability included."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from eventmesh.connectors.local import LocalConfig, LocalConnector
from eventmesh.testing import ConnectorConformance


class TestLocalConformance(ConnectorConformance):
    """The whole kit against the SQLite-backed local connector."""

    timeout = 10.0
    quiet = 0.3
    stress_events = 10_000

    @pytest.fixture
    def config(self, tmp_path: Path) -> LocalConfig:
        """Four partitions per topic, in this test's own directory."""
        return LocalConfig(data_dir=str(tmp_path / "data"), partitions=4)

    @pytest.fixture
    async def connector(self, config: LocalConfig) -> AsyncIterator[LocalConnector]:
        """A local connector on a fresh data directory."""
        async with LocalConnector(config) as connector:
            yield connector

    @pytest.fixture
    def reopen(self, config: LocalConfig) -> Callable[[], LocalConnector]:
        """A second connector on the same data directory."""
        return lambda: LocalConnector(config)
