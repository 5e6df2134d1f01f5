"""What the memory connector does beyond the kit: back-pressure, rebalancing (retention and
its limits: test_memory_retention.py)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import anyio
import anyio.lowlevel
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


async def test_a_producer_publishing_in_a_loop_lets_other_tasks_run() -> None:
    """Storing never waits, yet a loop of publishes does not hold the event loop: other
    tasks get turns while it runs, not only once it has ended."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with MemoryConnector() as connector, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.sleep(0.01)
        before = ticks
        for event in events(2_000):
            await connector.publish("t", [event])
        during = ticks - before
        tg.cancel_scope.cancel()
    assert during >= 10, f"other tasks ran {during} times while 2,000 events were published"


async def test_a_consumer_receives_while_its_producer_is_still_publishing() -> None:
    """A group's member is handed events during a producer's loop of publishes, in the
    order they were stored, not only after the loop."""
    async with (
        MemoryConnector(MemoryConfig(partitions=1)) as connector,
        connector.subscribe("t", "g") as consumer,
    ):
        published = 0
        seen_at: list[int] = []

        async def consume() -> None:
            got = 0
            while got < 1_000:
                batch = await consumer.fetch(100, timeout=5)
                assert batch, "nothing came"
                seen_at.append(published)
                for delivery in batch:
                    assert delivery.event.data == got
                    got += 1
                    await delivery.ack()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.01)
            for event in events(1_000):
                await connector.publish("t", [event])
                published += 1
    assert seen_at[0] < 1_000, "the consumer got its first events only once the loop ended"


async def test_a_publish_cancelled_at_its_turn_stores_nothing() -> None:
    """The turn a publish gives the loop comes before it stores: cancelled there, it
    stored nothing; a publish that stored its events returns (a retry after a cancel
    never stores them twice)."""
    async with MemoryConnector() as connector:
        await connector.publish("t", events(128))  # the next publish gives a turn
        with anyio.CancelScope() as scope:
            scope.cancel()
            await connector.publish("t", events(5))
        assert scope.cancelled_caught
        assert connector.topic_stats()["t"].retained == 128
        await connector.publish("t", events(5))
        assert connector.topic_stats()["t"].retained == 133


async def test_store_times_never_go_back_when_the_clock_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each event is stamped with its store time; a wall clock stepped back (NTP) does not
    make a later event older than an earlier one, which age limits and the release of
    the oldest rely on."""
    import eventmesh.connectors.memory as memory

    now = [0.0]
    monkeypatch.setattr(
        memory, "time", SimpleNamespace(time=lambda: now[0], monotonic=time.monotonic)
    )
    async with MemoryConnector(MemoryConfig(partitions=1)) as connector:
        for event, clock in zip(events(4), [1000.0, 2000.0, 1500.0, 2500.0], strict=True):
            now[0] = clock
            await connector.publish("t", [event])
        stored = await connector.read("t")
    assert [s.timestamp for s in stored] == [1000.0, 2000.0, 2000.0, 2500.0]
