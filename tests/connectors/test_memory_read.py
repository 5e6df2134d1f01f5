"""The memory connector browses what it holds without consuming it."""

from __future__ import annotations

import pytest

from eventmesh import Event
from eventmesh.connectors.browse import MAX_READ
from eventmesh.connectors.memory import MemoryConfig, MemoryConnector
from eventmesh.testing.browsing import check_read

pytestmark = [pytest.mark.anyio, pytest.mark.core]  # core: CI runs these on the core alone


async def test_read_pages_filters_by_time_and_consumes_nothing() -> None:
    """read() on the memory connector passes the browsing check."""
    async with MemoryConnector(MemoryConfig(partitions=3)) as connector:
        await check_read(connector, "browse")


async def test_read_sees_events_a_group_already_committed_and_caps_the_page() -> None:
    """Events every group read stay browsable while held, and one call returns at most
    MAX_READ events whatever the limit asks."""
    async with MemoryConnector(MemoryConfig(partitions=1)) as connector:
        async with connector.subscribe("t", "g", start="earliest") as consumer:
            await connector.publish("t", [Event(type="t", source="/s", data=i) for i in range(5)])
            for delivery in await consumer.fetch(5, timeout=5):
                await delivery.ack()
        stored = await connector.read("t", limit=10)
        assert [s.event.data for s in stored] == [0, 1, 2, 3, 4]
        assert [s.offset for s in stored] == [0, 1, 2, 3, 4]
        await connector.publish("t", [Event(type="t", source="/s") for _ in range(MAX_READ)])
        assert len(await connector.read("t", limit=MAX_READ * 2)) == MAX_READ
