"""A message the connector cannot decode never breaks a fetch, a member's leaving or a
browse: it is delivered wrapped (``cloudeventerror`` says why), and what came with it is
delivered as usual. A message on a member's pull inbox that JetStream did not send is
skipped."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from eventmesh import Event, PublishError
from eventmesh.bindings.nats import MESSAGE_TYPE
from eventmesh.connectors.base import Delivery
from eventmesh.testing import collect
from eventmesh.testing.polling import eventually
from eventmesh_nats import NatsConnector

pytestmark = [pytest.mark.nats, pytest.mark.anyio]

Factory = Callable[..., NatsConnector]

POISON = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
"""Header-less JSON nested far past the decoder's stack (msgspec raises RecursionError)."""


@pytest.fixture
def topic() -> str:
    """A topic no other test uses."""
    return f"malformed.{uuid.uuid4().hex[:10]}"


def _good(name: str) -> Event:
    return Event(type="t", source="/malformed", id=name)


def _check_wrapped(event: Event) -> None:
    assert event.type == MESSAGE_TYPE
    assert event.data == POISON
    assert "nested too deeply" in str(event.extensions["cloudeventerror"])


async def _send_poison(raw_nats: Any, subject: str, mode: str) -> None:
    if mode == "jetstream":
        await raw_nats.jetstream().publish(subject, POISON)
    else:
        await raw_nats.publish(subject, POISON)
        await raw_nats.flush()


@pytest.mark.parametrize("mode", ["jetstream", "core"])
async def test_a_message_too_deep_to_decode_is_delivered_wrapped_with_the_rest(
    make: Factory, topic: str, raw_nats: Any, mode: str
) -> None:
    """JSON nested too deep to decode, between two events, is delivered wrapped and the
    two events with it; fetch raised RecursionError, and the events taken with it were
    neither delivered nor given back."""
    connector = make(mode=mode)
    async with connector, connector.subscribe(topic, "g", start="earliest") as consumer:
        subject, _ = connector.route(topic, PublishError)
        await connector.publish(topic, [_good("good-1")])
        await _send_poison(raw_nats, subject, mode)
        await connector.publish(topic, [_good("good-2")])
        got = await collect(consumer, 3, timeout=10)
    events = [d.event for d in got]
    assert sorted(e.id for e in events if e.type == "t") == ["good-1", "good-2"]
    (wrapped,) = [e for e in events if e.type != "t"]
    _check_wrapped(wrapped)


async def test_a_core_member_leaving_hands_on_a_message_too_deep_to_decode(
    make: Factory, topic: str, raw_nats: Any
) -> None:
    """What a core member leaves unfetched, a message too deep to decode among it, goes
    to the group's next member (wrapped); leaving raised RecursionError."""
    connector = make(mode="core")
    async with connector:
        subject, _ = connector.route(topic, PublishError)
        async with connector.subscribe(topic, "g"):
            received = connector.nc.stats["in_msgs"]
            await _send_poison(raw_nats, subject, "core")
            await connector.publish(topic, [_good("good")])
            # Both are in the member's queue (a flush does not say so: nats-py writes its
            # PING ahead of buffered publishes).
            await eventually(lambda: connector.nc.stats["in_msgs"] >= received + 2)
        async with connector.subscribe(topic, "g") as second:
            got = await collect(second, 2, timeout=10)
    events = {d.event.type: d.event for d in got}
    assert events["t"].id == "good"
    _check_wrapped(events[MESSAGE_TYPE])


async def test_browsing_reads_a_message_too_deep_to_decode_wrapped(
    make: Factory, topic: str, raw_nats: Any
) -> None:
    """Browsing a topic that holds a message too deep to decode reads it wrapped, in its
    place; read raised RecursionError."""
    async with make() as connector:
        subject, _ = connector.route(topic, PublishError)
        await connector.publish(topic, [_good("good-1")])
        await _send_poison(raw_nats, subject, "jetstream")
        await connector.publish(topic, [_good("good-2")])
        stored = await connector.read(topic, limit=10)
    assert [s.offset for s in stored] == [1, 2, 3]
    assert [stored[0].event.id, stored[2].event.id] == ["good-1", "good-2"]
    _check_wrapped(stored[1].event)


async def test_a_message_on_the_pull_inbox_that_jetstream_did_not_send_is_skipped(
    make: Factory, topic: str, raw_nats: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone who sees a member's pull requests can send to its inbox: such a message
    (no JetStream ack subject as its reply) is skipped with a warning, and the events
    fetched with it are delivered; fetch raised nats' NotJSMessageError."""
    caplog.set_level(logging.WARNING, logger="eventmesh_nats")
    async with make() as connector:
        _, stream = connector.route(topic, PublishError)
        async with connector.subscribe(topic, "g", start="earliest") as consumer:
            requests = await raw_nats.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.g")
            await raw_nats.flush()
            assert await consumer.fetch(1, timeout=0.5) == []  # asks, finds nothing
            request = await requests.next_msg(timeout=10)
            await raw_nats.publish(request.reply, b"forged", reply="not.a.js.ack")
            await raw_nats.flush()
            await connector.publish(topic, [_good("good")])

            def skipped() -> bool:
                return any("JetStream did not send" in r.getMessage() for r in caplog.records)

            got: list[Delivery] = []
            with anyio.fail_after(20):  # until both came, in whichever order
                while not (got and skipped()):
                    got += await consumer.fetch(10, timeout=0.5)
    assert [d.event.id for d in got] == ["good"]


@pytest.mark.nats
@pytest.mark.anyio
async def test_health_is_false_once_nats_py_stops_reading(
    make: Factory, topic: str, nats_url: str
) -> None:
    """A message whose header block is not UTF-8 (stored by a raw client) ends nats-py's
    read loop for good while the connection stays up: health() now says so, where it
    said True while nothing could arrive any more."""
    connector = make()
    async with connector, connector.subscribe(topic, "g", start="earliest") as consumer:
        assert await connector.health()
        subject, _ = connector.route(topic, PublishError)
        host, port = nats_url.removeprefix("nats://").rsplit(":", 1)
        stream = await anyio.connect_tcp(host, int(port))
        async with stream:
            await stream.receive()  # INFO
            header = b"NATS/1.0 \xff\xfe\xfd\r\n\r\n"
            await stream.send(
                b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\n'
                + b"HPUB %s %d %d\r\n" % (subject.encode(), len(header), len(header) + 1)
                + header
                + b"x\r\nPING\r\n"
            )
            with anyio.fail_after(10):
                while b"PONG" not in await stream.receive():
                    pass
        with anyio.fail_after(20):
            while await connector.health():
                await consumer.fetch(10, timeout=0.2)  # the member asks; the reply kills
