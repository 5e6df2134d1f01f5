"""A check of :meth:`Connector.read` that any connector which can browse should pass:
the memory connector's tests, the Kafka and NATS plugins' and the local store's run it
against a real connector.

::

    async with MyConnector(config) as connector:
        await check_read(connector, "a-fresh-topic")
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from eventmesh.connectors.base import Connector, StoredEvent
from eventmesh.errors import RejectedError
from eventmesh.event import Event
from eventmesh.testing.conformance import collect

__all__ = ["check_read"]


def _events(prefix: str, n: int) -> list[Event]:
    return [
        Event(
            type="t",
            source="/browse",
            id=f"{prefix}-{i}",
            data=i,
            extensions={"partitionkey": f"k{i % 5}"},
        )
        for i in range(n)
    ]


async def _read_all(
    connector: Connector, topic: str, *, since: datetime | None = None, page: int = 1000
) -> list[StoredEvent]:
    """Every event from ``since``, page by page with the cursor; at most 100 pages."""
    out: list[StoredEvent] = []
    cursor: dict[int, int] = {}
    for _ in range(100):
        got = await connector.read(topic, since=since, after=cursor or None, limit=page)
        assert len(got) <= page, f"read returned {len(got)} events for limit={page}"
        if not got:
            return out
        for stored in got:
            last = cursor.get(stored.partition, -1)
            assert stored.offset > last, (
                f"partition {stored.partition}: offset {stored.offset} came after {last}"
            )
            cursor[stored.partition] = stored.offset
        out.extend(got)
    raise AssertionError("read kept returning events after 100 pages")


async def check_read(connector: Connector, topic: str, *, timeout: float = 30.0) -> None:
    """``read`` on ``topic`` (which must be new) pages with its cursor without gaps or
    repeats, honours ``since`` and ``limit``, refuses a bad limit, and consumes nothing:
    a group that joins afterwards at 'earliest' still gets every event."""
    with anyio.fail_after(timeout):
        assert await connector.read(topic, limit=10) == [], "a new topic should read empty"
        first, second = _events("a", 10), _events("b", 15)
        await connector.publish(topic, first)
        await anyio.sleep(0.05)  # store times of the two batches differ
        await connector.publish(topic, second)
        ids = [e.id for e in first + second]

        everything = await _read_all(connector, topic)
        assert sorted(s.event.id for s in everything) == sorted(ids)
        by_id = {s.event.id: s for s in everything}
        for event in first + second:
            assert by_id[event.id].event.data == event.data

        paged = await _read_all(connector, topic, page=7)
        assert sorted(s.event.id for s in paged) == sorted(ids), "paging lost or repeated"
        for key in {e.partitionkey for e in first + second}:  # each key in store order
            stored = [s.event.id for s in paged if s.event.partitionkey == key]
            assert stored == [e.id for e in first + second if e.partitionkey == key]

        assert len(await connector.read(topic, limit=3)) == 3

        stamps = [by_id[e.id].timestamp for e in second]
        if all(stamp is not None for stamp in stamps):
            low = min(s for s in stamps if s is not None)
            since = datetime.fromtimestamp(low, UTC) - timedelta(microseconds=1)
            expected = {
                s.event.id
                for s in everything
                if s.timestamp is not None and s.timestamp >= since.timestamp()
            }
            later = await _read_all(connector, topic, since=since, page=4)
            assert {s.event.id for s in later} == expected
            assert {e.id for e in second} <= expected
            assert not {e.id for e in first} <= expected, "since did not narrow the read"

        with pytest.raises(RejectedError):
            await connector.read(topic, limit=0)

        async with connector.subscribe(topic, "after-browsing", start="earliest") as consumer:
            got = await collect(consumer, len(ids), timeout=timeout / 2)
        assert sorted(d.event.id for d in got) == sorted(ids), "browsing consumed events"
