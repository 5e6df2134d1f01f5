"""What the memory connector does beyond the kit: back-pressure, rebalancing (retention and
its limits: test_memory_retention.py)."""

from __future__ import annotations

import anyio
import pytest

from eventmesh import Event, SubscribeError, TopicFullError
from eventmesh.connectors.memory import MemoryConfig, MemoryConnector
from eventmesh.errors import RejectedError
from eventmesh.testing import collect

pytestmark = [pytest.mark.anyio, pytest.mark.core]  # core: CI runs these on the core alone


def events(n: int, key: str | None = None) -> list[Event]:
    """n small events, all with partition key ``key`` when given."""
    ext = {"partitionkey": key} if key else {}
    return [Event(type="t", source="/s", data=i, extensions=ext) for i in range(n)]


async def test_a_member_closed_while_fetching_gets_nothing_and_loses_nothing() -> None:
    """Closing a waiting member returns [] and its partitions' events go to the others."""
    async with MemoryConnector(MemoryConfig(partitions=2)) as connector:
        a = connector.subscribe("t", "g")
        b = connector.subscribe("t", "g")
        await a.start()
        await b.start()
        result: list[object] = []

        async def wait_on_a() -> None:
            result.append(await a.fetch(10))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_on_a)
            await anyio.sleep(0.05)
            await a.close()
            # Published before the waiting fetch resumes: none of it may go to 'a'.
            await connector.publish("t", events(20))
        assert result == [[]]
        got = await collect(b, 20, timeout=5)
        assert sorted(d.event.data for d in got) == list(range(20))


async def test_a_slow_active_group_makes_producers_wait() -> None:
    """With when_full: wait a producer blocks until a group with members makes room."""
    async with (
        MemoryConnector(MemoryConfig(partitions=1, max_events=10)) as connector,
        connector.subscribe("t", "g") as consumer,
    ):
        await connector.publish("t", events(10))
        published = anyio.Event()

        async def produce() -> None:
            await connector.publish("t", events(5))
            published.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await anyio.wait_all_tasks_blocked()
            assert not published.is_set()  # still waiting: nothing was consumed
            got = await collect(consumer, 15, timeout=5)
            await published.wait()
        assert len(got) == 15


async def test_when_full_fail_raises_topic_full() -> None:
    """With when_full: fail a full topic with a lagging group refuses the publish."""
    config = MemoryConfig(partitions=1, max_events=10, when_full="fail")
    async with MemoryConnector(config) as connector, connector.subscribe("t", "g"):
        await connector.publish("t", events(10))
        with pytest.raises(TopicFullError, match="max_events=10"):
            await connector.publish("t", events(1))


async def test_subscribing_to_an_empty_topic_name_is_refused() -> None:
    """An empty topic name is refused at once (RejectedError, as a name the backend never
    takes; SubscribeError before topic names were checked as such)."""
    async with MemoryConnector() as connector:
        with pytest.raises((RejectedError, SubscribeError), match="non-empty"):
            connector.subscribe("", "g")


async def test_redelivery_after_a_member_leaves_counts_as_an_attempt() -> None:
    """Events a member took and left unacked, or nacked, come back as attempt 2 (once)."""
    async with MemoryConnector(MemoryConfig(partitions=1)) as connector:
        async with connector.subscribe("t", "g") as consumer:
            await connector.publish("t", events(2))
            _first, second = await collect(consumer, 2, timeout=5, ack=False)
            await second.nack(60)  # back in a minute: counted by the nack
        async with connector.subscribe("t", "g") as consumer:
            again = await collect(consumer, 2, timeout=5)
    assert sorted((d.event.data, d.attempt) for d in again) == [(0, 2), (1, 2)]
