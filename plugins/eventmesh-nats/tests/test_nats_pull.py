"""JetStream members pull on their own inbox (eventmesh_nats/_pull.py): what the server's
answers to those pull requests make a member do."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anyio
import nats
import pytest

from eventmesh import Event, PublishError
from eventmesh.testing import collect
from eventmesh.testing.polling import eventually
from eventmesh_nats import ConsumerSettings, NatsConfig, NatsConnector, StreamSettings
from eventmesh_nats._pull import _EXPIRES, _NO_WAIT_MARGIN, Puller

Factory = Callable[..., NatsConnector]


@pytest.fixture
def make(nats_url: str, stream_prefix: str) -> Factory:
    def build(**options: Any) -> NatsConnector:
        options.setdefault("subject_prefix", f"{stream_prefix.lower()}.")
        options.setdefault("stream", StreamSettings(name_prefix=stream_prefix))
        return NatsConnector(NatsConfig(servers=[nats_url], **options))

    return build


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
async def test_a_no_wait_request_the_server_never_ends_is_asked_again_within_a_second(
    raw_nats: Any,
) -> None:
    """The server ends a no_wait pull request at once; one that nothing ever ends (lost
    on the way) is given up on after _NO_WAIT_MARGIN and asked again, instead of holding
    the member's window for a long poll's expiry and a margin (7 s)."""
    subject = f"pull.next.{uuid.uuid4().hex[:10]}"
    asked: list[bytes] = []

    async def swallow(msg: Any) -> None:  # answers nothing, as a lost request would
        asked.append(msg.data)

    await raw_nats.subscribe(subject, cb=swallow)
    await raw_nats.flush()
    nc = await nats.connect(raw_nats.connected_url.geturl())
    puller = Puller(nc, subject, 2)
    try:
        await puller.start()
        await puller.top_up()
        with anyio.fail_after(_NO_WAIT_MARGIN + 2.0):
            await puller.wait(_EXPIRES)  # returns once the request is due to be given up
            await puller.top_up()
            await eventually(lambda: len(asked) == 2, timeout=2.0, what="a second request")
        assert all(b'"no_wait":true' in body for body in asked)
    finally:
        await puller.stop()
        await nc.close()
