"""The memory connector keeps its word: it frees what every group committed as they go,
keeps what a group still needs (members or not), and releases events only under a limit
the configuration names, counting them."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest

from eventmesh import Event, TopicFullError
from eventmesh.connectors.memory import MemoryConfig, MemoryConnector, TopicStats
from eventmesh.errors import RejectedError, SubscribeError
from eventmesh.testing import collect
from eventmesh.testing.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.core]  # core: CI runs these on the core alone


def events(n: int, first: int = 0) -> list[Event]:
    """n small events numbered from ``first``."""
    return [Event(type="t", source="/s", data=i) for i in range(first, first + n)]


def stats(connector: MemoryConnector, topic: str = "t") -> TopicStats:
    return connector.topic_stats()[topic]


async def test_memory_stays_bounded_while_a_consumer_keeps_up() -> None:
    """200,000 events through a group that acks as it goes: the topic never holds more
    than a few thousand of them, far below max_events, and releases none."""
    total, batch = 200_000, 100
    async with (
        MemoryConnector(MemoryConfig(partitions=4)) as connector,
        connector.subscribe("t", "g") as consumer,
    ):
        most = received = 0
        for first in range(0, total, batch):
            await connector.publish("t", events(batch, first))
            while received < first + batch:
                got = await consumer.fetch(batch, timeout=5)
                assert got, "the consumer got nothing"
                for delivery in got:
                    await delivery.ack()
                received += len(got)
            most = max(most, stats(connector).held)
        final = stats(connector)
    assert received == total
    assert most <= 4 * 512  # at most about two trim steps per partition
    assert final.retained == 0
    assert final.released == 0


async def test_a_group_without_members_for_a_while_gets_every_event() -> None:
    """A group whose only member left (a client reconnecting) gets all the events
    published meanwhile, even three times max_events: the producer waits, nothing goes."""
    limit, total = 1_000, 3_000
    async with MemoryConnector(MemoryConfig(partitions=2, max_events=limit)) as connector:
        async with connector.subscribe("t", "g") as consumer:
            await connector.publish("t", events(1, -1))
            assert len(await collect(consumer, 1, timeout=5)) == 1
        # The group has no member now; a producer publishes one event at a time.
        async with anyio.create_task_group() as tg:
            tg.start_soon(_publish_one_by_one, connector, total)
            await eventually(lambda: stats(connector).retained == limit, what="the topic to fill")
            async with connector.subscribe("t", "g") as consumer:
                got = await collect(consumer, total, timeout=30)
        assert sorted(d.event.data for d in got) == list(range(total))
        assert stats(connector).released == 0


async def _publish_one_by_one(connector: MemoryConnector, total: int) -> None:
    for i in range(total):
        await connector.publish("t", events(1, i))


async def test_a_full_topic_fails_rather_than_drop_what_an_idle_group_needs() -> None:
    """when_full: fail raises TopicFullError naming the idle group that holds the events,
    and the group still gets every one of them."""
    config = MemoryConfig(partitions=1, max_events=10, when_full="fail")
    async with MemoryConnector(config) as connector:
        async with connector.subscribe("t", "idle"):
            pass
        await connector.publish("t", events(10))
        with pytest.raises(TopicFullError, match=r"max_events=10.*'idle' \(no members\)"):
            await connector.publish("t", events(1, 10))
        async with connector.subscribe("t", "idle") as consumer:
            got = await collect(consumer, 10, timeout=5)
        assert [d.event.data for d in got] == list(range(10))
        assert stats(connector).released == 0


async def test_a_full_topic_makes_the_producer_wait_for_an_idle_group() -> None:
    """when_full: wait (the default) holds the producer while a group without members
    needs every event; full_timeout ends the wait with TopicFullError, nothing dropped."""
    config = MemoryConfig(partitions=1, max_events=10, full_timeout=0.3)
    async with MemoryConnector(config) as connector:
        async with connector.subscribe("t", "idle"):
            pass
        await connector.publish("t", events(10))
        with pytest.raises(TopicFullError, match=r"stayed full.*'idle' \(no members\)"):
            await connector.publish("t", events(1, 10))
        assert stats(connector) == TopicStats(retained=10, held=10, released=0, groups=1)


async def test_a_waiting_producer_goes_on_when_the_idle_group_reads_or_is_deleted() -> None:
    """The producer held by an idle group goes on once the group comes back and reads,
    and once a group nobody will read is deleted, which frees its events."""
    async with MemoryConnector(MemoryConfig(partitions=1, max_events=10)) as connector:
        for group in ("back", "gone"):
            async with connector.subscribe("t", group):
                pass
        await connector.publish("t", events(10))
        done: list[str] = []

        async def produce(tag: str) -> None:
            await connector.publish("t", events(5, 10))
            done.append(tag)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce, "first")
                await anyio.wait_all_tasks_blocked()
                assert done == []
                async with connector.subscribe("t", "back") as consumer:
                    got = await collect(consumer, 10, timeout=5)
                assert [d.event.data for d in got] == list(range(10))
                await anyio.wait_all_tasks_blocked()
                assert done == []  # 'gone' still needs all ten
                assert await connector.delete_group("t", "gone")
        assert done == ["first"]
        assert stats(connector) == TopicStats(retained=5, held=5, released=0, groups=1)
        assert not await connector.delete_group("t", "gone")


async def test_a_group_with_members_cannot_be_deleted() -> None:
    """delete_group refuses a group that still has members, with SubscribeError."""
    async with MemoryConnector() as connector, connector.subscribe("t", "g"):
        with pytest.raises(SubscribeError, match="1 members"):
            await connector.delete_group("t", "g")


async def test_drop_oldest_releases_the_oldest_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """when_full: drop_oldest never holds the producer: it releases exactly the oldest
    events beyond max_events, counts them, logs the first time, and the idle group gets
    the newest max_events when it comes back."""
    config = MemoryConfig(partitions=3, max_events=10, when_full="drop_oldest")
    async with MemoryConnector(config) as connector:
        async with connector.subscribe("t", "idle"):
            pass
        for i in range(25):
            await connector.publish("t", events(1, i))
        assert stats(connector).released == 15
        assert stats(connector).retained == 10
        assert connector.released() == {"t": 15}
        assert "released its 1 oldest events unread" in caplog.text
        async with connector.subscribe("t", "idle") as consumer:
            got = await collect(consumer, 10, timeout=5)
        assert sorted(d.event.data for d in got) == list(range(15, 25))


async def test_max_age_releases_old_events_and_counts_them() -> None:
    """Events older than max_age are released, read or not, and counted: a group that
    comes back finds only the newer ones."""
    config = MemoryConfig(partitions=2, max_age=0.2)
    async with MemoryConnector(config) as connector:
        async with connector.subscribe("t", "idle"):
            pass
        await connector.publish("t", events(5))
        await eventually(lambda: stats(connector).released == 5, what="the old events to expire")
        await connector.publish("t", events(3, 5))
        async with connector.subscribe("t", "idle") as consumer:
            got = await collect(consumer, 3, timeout=5)
        assert sorted(d.event.data for d in got) == [5, 6, 7]
        assert stats(connector).released == 5


async def test_max_age_counts_nothing_a_group_has_read() -> None:
    """Expiry counts only unread events: a consumer that kept up loses nothing to it."""
    async with (
        MemoryConnector(MemoryConfig(partitions=1, max_age=0.1)) as connector,
        connector.subscribe("t", "g") as consumer,
    ):
        await connector.publish("t", events(5))
        assert len(await collect(consumer, 5, timeout=5)) == 5
        await eventually(lambda: stats(connector).held == 0, what="the read events to expire")
        assert stats(connector).released == 0


async def test_max_age_lets_a_waiting_producer_go_on() -> None:
    """A producer waiting on a full topic goes on when the old events expire."""
    config = MemoryConfig(partitions=1, max_events=5, max_age=0.2)
    async with MemoryConnector(config) as connector:
        async with connector.subscribe("t", "idle"):
            pass
        await connector.publish("t", events(5))
        with anyio.fail_after(5):
            await connector.publish("t", events(5, 5))
        assert stats(connector).released == 5


@pytest.mark.parametrize("groups", [0, 1])
async def test_a_batch_larger_than_max_events_is_rejected(groups: int) -> None:
    """A batch that can never fit is refused at once with RejectedError naming
    max_events, with or without groups, and nothing of it is stored."""
    async with MemoryConnector(MemoryConfig(max_events=10)) as connector:
        if groups:
            async with connector.subscribe("t", "g"):
                pass
        with pytest.raises(RejectedError, match=r"11 events.*max_events=10"):
            await connector.publish("t", events(11))
        await connector.publish("t", events(10))
        assert stats(connector).retained == 10


async def test_a_topic_nobody_joined_keeps_its_newest_events_up_to_max_events() -> None:
    """Without groups a full topic releases its oldest events, counted, and never holds
    its producer; a group that starts at 'earliest' later finds the newest ones."""
    async with MemoryConnector(MemoryConfig(partitions=1, max_events=100)) as connector:
        with anyio.fail_after(5):
            for i in range(10):
                await connector.publish("unread", events(50, 50 * i))
        held = stats(connector, "unread")
        assert held.retained <= 100
        assert held.released == 500 - held.retained
        async with connector.subscribe("unread", "late", start="earliest") as consumer:
            got = await collect(consumer, 100, timeout=5)
        assert [d.event.data for d in got] == list(range(500 - held.retained, 500))


async def test_a_new_group_at_earliest_gets_what_another_group_still_needs() -> None:
    """'earliest' starts at the oldest event still held, so it includes every event that
    some group, here one without members, has not committed."""
    async with MemoryConnector(MemoryConfig(partitions=1)) as connector:
        async with connector.subscribe("t", "slow"):
            pass
        async with connector.subscribe("t", "fast") as consumer:
            await connector.publish("t", events(5))
            assert len(await collect(consumer, 5, timeout=5)) == 5
        async with connector.subscribe("t", "later", start="earliest") as consumer:
            got = await collect(consumer, 5, timeout=5)
        assert [d.event.data for d in got] == list(range(5))


async def test_inactive_threshold_deletes_an_idle_group_and_counts_its_events() -> None:
    """A group without members for inactive_threshold is deleted when its events are in
    the way: the waiting producer goes on, and the events only it needed are counted."""
    config = MemoryConfig(partitions=1, max_events=5, inactive_threshold=0.2)
    async with MemoryConnector(config) as connector:
        async with connector.subscribe("t", "gone"):
            pass
        await connector.publish("t", events(5))
        with anyio.fail_after(5):
            await connector.publish("t", events(1, 5))
        assert stats(connector) == TopicStats(retained=1, held=1, released=5, groups=0)


async def test_a_group_back_within_inactive_threshold_keeps_everything() -> None:
    """A group whose member comes back before inactive_threshold loses nothing."""
    config = MemoryConfig(partitions=1, inactive_threshold=60)
    async with MemoryConnector(config) as connector:
        async with connector.subscribe("t", "g"):
            pass
        await connector.publish("t", events(5))
        async with connector.subscribe("t", "g") as consumer:
            got = await collect(consumer, 5, timeout=5)
        assert [d.event.data for d in got] == list(range(5))
        assert stats(connector).released == 0
