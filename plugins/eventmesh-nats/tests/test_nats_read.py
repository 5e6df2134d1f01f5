"""The NATS connector browses a JetStream topic without a group: nothing is acked."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import anyio
import pytest

from eventmesh import Event, Mesh
from eventmesh.connectors.memory import MemoryConnector
from eventmesh.deadletters import ReplaySelection, direct_publish, replay
from eventmesh.delivery.deadletter import dead_letter_event
from eventmesh.errors import RejectedError
from eventmesh.testing.browsing import check_read
from eventmesh_nats import NatsConnector

pytestmark = [pytest.mark.nats, pytest.mark.anyio]

Factory = Callable[..., NatsConnector]


def dead_and_letter(topic: str) -> tuple[Event, Event]:
    """An event of ``topic`` and the dead letter a failing group 'billing' made of it."""
    event = Event(type="t", source="/s", id=f"{topic}-1", data={"n": 1})
    letter = dead_letter_event(
        event, reason="failed", error="E: x", attempts=3, topic=topic, group="billing"
    )
    return event, letter


def new_topic() -> str:
    return f"browse.{uuid.uuid4().hex[:10]}"


async def test_read_pages_filters_by_time_and_consumes_nothing(make: Factory) -> None:
    """read() on JetStream passes the browsing check (cursor paging, since, limit, and a
    group that joins afterwards at 'earliest' gets every event), and leaves no consumer
    of its own behind."""
    topic = new_topic()
    async with make() as connector:
        await check_read(connector, topic, timeout=60)
        _, stream = connector.route(topic, RejectedError)
        names = [c.name for c in await connector.js.consumers_info(stream)]
        assert not [n for n in names if n.startswith("browse_")], names


async def test_a_missing_stream_reads_empty_and_core_mode_cannot_browse(make: Factory) -> None:
    """A topic without a stream reads [] (nothing is created); core mode refuses."""
    topic = new_topic()
    async with make() as connector:
        assert await connector.read(topic) == []
        _, stream = connector.route(topic, RejectedError)
        assert stream not in [s.config.name for s in await connector.js.streams_info()]
    async with make(mode="core") as core:
        with pytest.raises(RejectedError, match="core mode"):
            await core.read(topic)


async def test_a_replay_is_recorded_in_a_kv_bucket_and_not_repeated_after_a_restart(
    make: Factory,
) -> None:
    """Replayed dead letters are recorded in the connector's state (a KV bucket), so a
    mesh started afresh skips them; the replayed events reach the original topic without
    deadletter* extensions."""
    topic = new_topic()
    event, letter = dead_and_letter(topic)
    with anyio.fail_after(60):
        async with Mesh(connectors={"default": make()}) as mesh:
            await mesh.publish(f"{topic}.dlq", letter)
            done = await mesh.dead_letters(f"{topic}.dlq").replay()
            assert done.ids == [event.id]
        async with Mesh(connectors={"default": make()}) as mesh:
            again = await mesh.dead_letters(f"{topic}.dlq").replay()
            assert (again.replayed, again.skipped) == (0, 1)
            [stored] = (await mesh.dead_letters(topic).list()).events
            assert (stored.partition, stored.event.id) == (0, event.id)
            assert "deadletterreason" not in stored.event.extensions


async def test_a_replay_inside_the_duplicate_window_is_stored_again(make: Factory) -> None:
    """An event dead-lettered and replayed within the stream's duplicate_window (same
    source and id, so the same Nats-Msg-Id as its first publish) is stored again, not
    dropped by JetStream as a producer's retry; replaying it twice stores it once more."""
    topic = new_topic()
    event, letter = dead_and_letter(topic)
    with anyio.fail_after(60):
        async with Mesh(connectors={"default": make()}) as mesh:
            await mesh.publish(topic, event)
            await mesh.publish(f"{topic}.dlq", letter)
            done = await mesh.dead_letters(f"{topic}.dlq").replay()
            assert done.ids == [event.id]
            stored = (await mesh.dead_letters(topic).list()).events
            assert [(s.offset, s.event.id) for s in stored] == [(1, event.id), (2, event.id)]
            assert stored[1].event.data == {"n": 1}
            # The same replay retried (the same key) is still stored once; another is not.
            connector = mesh.connector(topic)
            await connector.republish(topic, [event], ["dlq.0.1"])
            await connector.republish(topic, [event], ["dlq.0.1"])
            assert len((await mesh.dead_letters(topic).list()).events) == 3


async def test_replays_of_dead_letters_at_the_same_position_are_all_stored(make: Factory) -> None:
    """Two dead-letter topics that hold their letter at the same position (two replicas
    with in-memory dead-letter topics, or one after a restart) replay to one JetStream
    topic inside its duplicate window: both replays are stored, neither is taken for a
    retry of the other."""
    topic = new_topic()
    event, letter = dead_and_letter(topic)
    with anyio.fail_after(60):
        async with Mesh(connectors={"default": make()}) as mesh:
            await mesh.publish(topic, event)
            for _ in range(2):
                async with MemoryConnector() as replica:
                    await replica.publish(f"{topic}.dlq", [letter])
                    await anyio.sleep(0.002)  # a later store time, as a real second letter has
                    done = await replay(
                        replica,
                        f"{topic}.dlq",
                        ReplaySelection(),
                        publish=direct_publish(mesh),
                    )
                    assert done.ids == [event.id]
            stored = (await mesh.dead_letters(topic).list()).events
            assert [s.event.id for s in stored] == [event.id] * 3


async def test_browsing_unknown_topics_leaves_no_trace_in_the_connector(make: Factory) -> None:
    """A caller who browses made-up topic names (each answered, empty) leaves nothing
    behind: the connector keeps a route only for topics published or subscribed to,
    which the mesh bounds by limits.max_topics."""
    with anyio.fail_after(60):
        async with Mesh(connectors={"default": make()}) as mesh:
            connector = mesh.connector("known.topic")
            known = dict(connector._routes)
            for n in range(20):
                assert (await mesh.dead_letters(f"made.up.{n}").list()).events == []
            assert connector._routes == known
            assert mesh.topics == ["known.topic"]
