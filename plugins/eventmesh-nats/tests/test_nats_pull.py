"""JetStream members pull on their own inbox (eventmesh_nats/_pull.py): what the server's
answers to those pull requests make a member do."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from eventmesh import Event, PublishError
from eventmesh.testing import collect
from eventmesh_nats import ConsumerSettings, NatsConnector
from eventmesh_nats._pull import _EXPIRES

Factory = Callable[..., NatsConnector]


@pytest.mark.nats
@pytest.mark.anyio
async def test_a_consumer_deleted_under_a_member_is_made_again_at_once(
    make: Factory, raw_nats: Any
) -> None:
    """The server ending a waiting member's pull request with "Consumer Deleted" (409)
    makes the member make its consumer again after a short back-off, not after
    consumer.recheck (set here far beyond the test's deadline)."""
    topic = f"pull.{uuid.uuid4().hex[:10]}"
    connector = make(consumer=ConsumerSettings(recheck=600))
    async with connector, connector.subscribe(topic, "lazarus") as consumer:
        _, stream = connector.route(topic, PublishError)
        # Nothing to fetch: the member ends up waiting on the server with a long poll
        # (5 s), which the deletion ends with a 409.
        assert await consumer.fetch(3, timeout=0.5) == []
        await raw_nats.jetstream().delete_consumer(stream, "lazarus")
        # The member reads the 409 and makes its consumer again (from 'latest', as it
        # was told to start), so what is published after that reaches it.
        assert await consumer.fetch(3, timeout=3) == []
        events = [Event(type="t", source="/pull", data={"n": n}) for n in range(3)]
        await connector.publish(topic, events)
        got = await collect(consumer, 3, timeout=30)
    assert sorted(d.event.data["n"] for d in got) == [0, 1, 2]


@pytest.mark.nats
@pytest.mark.anyio
async def test_a_request_ended_while_the_member_was_busy_is_asked_again_at_once(
    make: Factory,
) -> None:
    """A pull request the server ended while the member was not fetching (here the long
    poll's expiry, read with the next fetch) is followed by a new one in that same fetch:
    the member does not wait out a poll with nothing asked for (it did: an event came
    only after that poll's 5 s, a stall of seconds in the middle of a flow)."""
    topic = f"pull.{uuid.uuid4().hex[:10]}"
    async with make() as connector, connector.subscribe(topic, "patient") as consumer:
        # Nothing to fetch: the member ends up with a long poll on the server.
        assert await consumer.fetch(2, timeout=0.3) == []
        # The poll expires on the server while nobody fetches; its 408 waits unread.
        await anyio.sleep(_EXPIRES + 1.0)
        await connector.publish(topic, [Event(type="t", source="/pull", data={"n": 1})])
        got = await consumer.fetch(2, timeout=_EXPIRES - 2.0)
    assert [d.event.data["n"] for d in got] == [1]


@pytest.mark.nats
@pytest.mark.anyio
async def test_a_member_asks_for_at_most_half_its_groups_max_ack_pending(make: Factory) -> None:
    """However fast its handlers, a member keeps at most half of its consumer's
    max_ack_pending asked for (its window grows in a steady flow): what is asked past
    that only waits on the server, and is counted against the wrong requests."""
    topic = f"pull.{uuid.uuid4().hex[:10]}"
    connector = make(consumer=ConsumerSettings(max_ack_pending=64))
    async with connector, connector.subscribe(topic, "capped") as consumer:
        events = [Event(type="t", source="/pull", data={"n": n}) for n in range(3000)]
        await connector.publish(topic, events)
        seen: set[int] = set()
        widest = 0
        while len(seen) < len(events):
            batch = await consumer.fetch(32, timeout=10)
            assert batch, f"nothing more after {len(seen)} events"
            for delivery in batch:
                seen.add(delivery.event.data["n"])
                await delivery.ack()
            widest = max(widest, consumer._puller.window)  # type: ignore[attr-defined]
    assert seen == set(range(len(events)))
    assert widest <= 32


@pytest.mark.nats
@pytest.mark.anyio
async def test_a_consumer_whose_limits_refuse_every_pull_is_a_warning_once_a_minute(
    make: Factory, raw_nats: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A group's consumer made elsewhere with max_expires below the member's long poll
    refuses each poll (409 Exceeded MaxRequestExpires) for ever: that is a warning
    naming the consumer and what to change, once a minute however often it is asked
    again (it was a debug line every 0.5 s)."""
    caplog.set_level(logging.WARNING, logger="eventmesh_nats")
    topic = f"pull.{uuid.uuid4().hex[:10]}"
    connector = make()
    async with connector:
        subject, stream = connector.route(topic, PublishError)
        await connector.streams.ensure(topic, subject, stream, PublishError)
        config = {
            "durable_name": "strict",
            "ack_policy": "explicit",
            "filter_subject": subject,
            "max_expires": 1_000_000_000,  # 1 s, in nanoseconds
        }
        answer = await raw_nats.request(
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.strict",
            json.dumps({"stream_name": stream, "config": config}).encode(),
        )
        assert "error" not in json.loads(answer.data)
        async with connector.subscribe(topic, "strict") as consumer:

            def warnings() -> list[str]:
                return [
                    r.getMessage()
                    for r in caplog.records
                    if r.levelno == logging.WARNING and "refuses" in r.getMessage()
                ]

            with anyio.fail_after(20):
                while not warnings():  # a no_wait request, then the refused long poll
                    assert await consumer.fetch(1, timeout=0.5) == []
            refused = consumer._puller.refused  # type: ignore[attr-defined]
            # Asked again every 0.5 s, refused each time, and not warned about again.
            with anyio.move_on_after(2.0):
                while True:
                    await consumer.fetch(1, timeout=0.5)
    (warning,) = warnings()
    assert "MaxRequestExpires" in refused
    assert "'strict'" in warning
    assert "max_expires" in warning
    assert "delete the consumer" in warning
