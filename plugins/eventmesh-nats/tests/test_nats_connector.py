"""The NATS connector's own behaviour beyond the kit: config, errors, streams, core hand-off."""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from nats.js.api import AckPolicy

import eventmesh
from eventmesh import ConfigError, ConnectError, Event, PublishError, SubscribeError
from eventmesh.connectors import load_connector
from eventmesh.connectors.base import Delivery
from eventmesh.errors import RejectedError
from eventmesh.testing import collect
from eventmesh.testing.polling import eventually
from eventmesh_nats import (
    ConsumerSettings,
    CoreSettings,
    NatsConfig,
    NatsConnector,
    StreamSettings,
)

Factory = Callable[..., NatsConnector]


@pytest.fixture
def topic() -> str:
    """A topic no other test uses."""
    return f"conn.{uuid.uuid4().hex[:10]}"


def _events(count: int, **fields: Any) -> list[Event]:
    return [Event(type="t", source="/test", data={"n": n}, **fields) for n in range(count)]


# -- configuration and the plugin surface (no server) ---------------------------------------


def test_plugin_is_found_by_its_entry_point() -> None:
    """'type: nats' loads NatsConnector and checks its options as a NatsConfig."""
    assert load_connector("nats") is NatsConnector
    config = eventmesh.load_config(
        {
            "connectors": {
                "default": {
                    "type": "nats",
                    "servers": ["nats://127.0.0.1:4333"],
                    "mode": "core",
                    "consumer": {"ack_wait": "10s"},
                    "stream": {"max_age": "1h", "storage": "memory"},
                }
            }
        }
    )
    nats_config = config.connectors["default"].config
    assert isinstance(nats_config, NatsConfig)
    assert nats_config.consumer.ack_wait == 10.0
    assert nats_config.stream.max_age == 3600.0
    assert nats_config.mode == "core"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"sevrers": ["nats://127.0.0.1:4222"]}, "connectors.default.sevrers"),
        ({"mode": "push"}, "connectors.default.mode"),
        ({"consumer": {"ack_wait": "soon"}}, "connectors.default.consumer.ack_wait"),
        ({"stream": {"replicas": 0}}, "connectors.default.stream"),
    ],
)
def test_wrong_settings_are_config_errors_naming_the_key(options: dict[str, Any], key: str) -> None:
    """A misspelt key or a bad value is a ConfigError that names where it is."""
    with pytest.raises(ConfigError) as info:
        eventmesh.load_config({"connectors": {"default": {"type": "nats", **options}}})
    assert info.value.key is not None
    assert info.value.key.startswith(key)


@pytest.mark.parametrize(
    "options",
    [
        {"user": "alice"},
        {"subjects": {"orders": "orders.*"}},
        {"streams": {"a": "SAME", "b": "SAME"}},
        {"streams": {"a": "has.dot"}},
        {"servers": []},
        {"max_in_flight": 0},
        {"subject_prefix": "bad prefix."},
    ],
)
def test_inconsistent_settings_are_refused(options: dict[str, Any]) -> None:
    """Settings that cannot work together are refused when the config is built."""
    with pytest.raises(ValueError, match=r"\w"):
        NatsConfig(**options)


def test_topics_map_to_subjects_and_stream_names() -> None:
    """A topic gets the prefix as subject and an escaped stream name; maps override both."""
    config = NatsConfig(subjects={"legacy": "old.orders"}, streams={"legacy": "ORDERS"})
    assert config.subject_for("orders.created") == "eventmesh.orders.created"
    assert config.stream_for("orders.created") == "EVENTMESH_orders~2Ecreated"
    assert config.subject_for("legacy") == "old.orders"
    assert config.stream_for("legacy") == "ORDERS"
    for bad in ("bad topic", "a.>.b", "a..b", "*", "", "ünï"):
        with pytest.raises(ValueError, match="cannot be a NATS subject"):
            config.subject_for(bad)


@pytest.mark.parametrize("name", ["eventmesh_nats", "eventmesh.bindings.nats"])
def test_public_names_are_sorted_and_exist(name: str) -> None:
    """The public modules list their names sorted, and every listed name exists."""
    module = importlib.import_module(name)
    assert module.__all__ == sorted(module.__all__)
    for item in module.__all__:
        assert hasattr(module, item), f"{name}.{item} is listed but missing"


def test_capabilities_follow_the_configuration() -> None:
    """JetStream on file is durable; on memory it is not; core promises neither."""
    file = NatsConnector(NatsConfig()).capabilities
    memory = NatsConnector(NatsConfig(stream=StreamSettings(storage="memory"))).capabilities
    core = NatsConnector(NatsConfig(mode="core")).capabilities
    assert (file.durable, file.replay, file.redelivery) == (True, True, True)
    assert (memory.durable, memory.replay) == (False, True)
    assert (core.durable, core.replay, core.redelivery) == (False, False, True)
    assert not file.ordered_by_key
    assert not memory.ordered_by_key
    assert not core.ordered_by_key


# -- connecting and errors --------------------------------------------------------------------


@pytest.mark.anyio
async def test_unreachable_server_is_a_connect_error() -> None:
    """Connecting to a port nothing listens on raises ConnectError, not a nats error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = NatsConfig(
        servers=[f"nats://127.0.0.1:{port}"], connect_timeout=0.5, reconnect_wait=0.1
    )
    with pytest.raises(ConnectError) as info:
        await NatsConnector(config).open()
    assert "127.0.0.1" in str(info.value)
    assert info.value.__cause__ is not None


@pytest.fixture
async def connector(make: Factory) -> AsyncIterator[NatsConnector]:
    """An open JetStream-mode connector."""
    async with make() as connector:
        yield connector


@pytest.mark.nats
@pytest.mark.anyio
async def test_server_refusal_is_a_publish_error(make: Factory, topic: str) -> None:
    """A stream the server refuses to create (3 replicas, one server) is a PublishError."""
    async with make(stream=StreamSettings(name_prefix="EMREFUSED_", replicas=3)) as connector:
        with pytest.raises(PublishError) as info:
            await connector.publish(topic, _events(1))
    assert "replicas" in str(info.value)
    assert info.value.__cause__ is not None


@pytest.mark.nats
@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["jetstream", "core"])
async def test_oversized_event_is_rejected(make: Factory, topic: str, mode: str) -> None:
    """An event larger than the server's max_payload is refused with a RejectedError
    (never retried), in both modes."""
    async with make(mode=mode) as connector:
        with pytest.raises(RejectedError) as info:
            await connector.publish(topic, [Event(type="t", source="/s", data=b"x" * 2_000_000)])
    assert "max_payload" in str(info.value)


@pytest.mark.nats
@pytest.mark.anyio
@pytest.mark.parametrize("binding", ["binary", "structured"])
async def test_an_event_over_max_payload_only_with_its_headers_is_rejected(
    make: Factory, topic: str, binding: str
) -> None:
    """A message whose payload fits max_payload but not with its headers (binary: a
    6 KB attribute; structured: the Nats-Msg-Id added to a payload just below the
    bound) is refused with RejectedError before it is sent: sent, the server closes the
    connection and nats-py gives it up for good."""
    async with make(binding=binding, publish_timeout=3) as connector:
        limit = connector.nc.max_payload
        if binding == "binary":
            event = Event(
                type="t",
                source="/s",
                datacontenttype="application/octet-stream",
                data=b"x" * (limit - 5000),
                extensions={"big": "y" * 6000},
            )
        else:
            # Content-Type takes 56 bytes of headers and Nats-Msg-Id 47 more: this payload
            # fits with the first alone.
            bare = len(connector.encode(Event(type="t", source="/s", id="big", data=""))[1])
            event = Event(type="t", source="/s", id="big", data="x" * (limit - 80 - bare))
            assert len(connector.encode(event)[1]) == limit - 80
        with pytest.raises(RejectedError, match="max_payload"):
            await connector.publish(topic, [event])
        await connector.publish(topic, _events(1))  # the connection lives
        assert connector.connected


@pytest.mark.nats
@pytest.mark.anyio
async def test_topic_that_is_no_subject_is_refused_on_subscribe(connector: NatsConnector) -> None:
    """Joining a group on a topic NATS cannot carry raises RejectedError, at once."""
    with pytest.raises(RejectedError):
        async with connector.subscribe("bad topic", "g"):
            pass


@pytest.mark.nats
@pytest.mark.anyio
async def test_closing_the_connector_closes_its_consumers(make: Factory, topic: str) -> None:
    """Consumers still open when the connector closes are closed with it."""
    connector = make()
    await connector.open()
    consumer = connector.subscribe(topic, "g")
    await consumer.start()
    assert await connector.health()
    await connector.close()
    assert consumer.closed
    assert not await connector.health()


# -- JetStream ----------------------------------------------------------------------------------


@pytest.mark.nats
@pytest.mark.anyio
async def test_each_event_is_stored_exactly_once(make: Factory, topic: str) -> None:
    """A large pipelined publish stores every event once, even without deduplication."""
    async with make(deduplicate=False, max_in_flight=10) as connector:
        await connector.publish(topic, _events(1_000))
        _, stream = connector.route(topic, PublishError)
        info = await connector.js.stream_info(stream)
    assert info.state.messages == 1_000


@pytest.mark.nats
@pytest.mark.anyio
async def test_publishing_the_same_event_again_stores_it_once(
    connector: NatsConnector, topic: str
) -> None:
    """With deduplicate, a retried publish (same source and id) is stored once."""
    events = _events(20)
    await connector.publish(topic, events)
    await connector.publish(topic, events)
    _, stream = connector.route(topic, PublishError)
    info = await connector.js.stream_info(stream)
    assert info.state.messages == 20


@pytest.mark.nats
@pytest.mark.anyio
async def test_delivery_carries_the_stream_position(connector: NatsConnector, topic: str) -> None:
    """offset is the stream sequence, attempt the delivery count, timestamp the store time."""
    async with connector.subscribe(topic, "g", start="earliest") as consumer:
        await connector.publish(topic, _events(3))
        got = await collect(consumer, 3, timeout=10)
    assert sorted(d.offset for d in got) == [1, 2, 3]
    assert {d.attempt for d in got} == {1}
    now = datetime.now(UTC).timestamp()
    assert all(d.timestamp is not None and abs(now - d.timestamp) < 30 for d in got)


@pytest.mark.nats
@pytest.mark.anyio
async def test_foreign_messages_are_delivered_wrapped(
    connector: NatsConnector, topic: str, raw_nats: Any
) -> None:
    """A plain message gets id <stream>-<seq>; a broken CloudEvent keeps its reason."""
    subject, stream = connector.route(topic, PublishError)
    async with connector.subscribe(topic, "g", start="earliest") as consumer:
        js = raw_nats.jetstream()
        await js.publish(subject, b"plain bytes")
        await js.publish(subject, b"{}", headers={"ce-specversion": "1.0", "ce-id": "x"})
        got = await collect(consumer, 2, timeout=10)
    plain, broken = sorted(got, key=lambda d: d.offset)
    assert plain.event.type == "io.eventmesh.nats.message"
    assert plain.event.id == f"{stream}-1"
    assert plain.event.data == b"plain bytes"
    assert plain.event.time is not None
    assert "ce-source" in str(broken.event.extensions["cloudeventerror"])


@pytest.mark.nats
@pytest.mark.anyio
async def test_existing_stream_is_given_the_topic_subject(
    make: Factory, topic: str, raw_nats: Any, stream_prefix: str
) -> None:
    """A topic mapped to an existing stream adds its subject to it and is stored there."""
    name = f"{stream_prefix}EXISTING"
    js = raw_nats.jetstream()
    await js.add_stream(name=name, subjects=[f"{stream_prefix.lower()}.other"])
    async with make(streams={topic: name}) as connector:
        await connector.publish(topic, _events(2))
    info = await js.stream_info(name)
    assert info.state.messages == 2
    assert len(info.config.subjects or []) == 2


@pytest.mark.nats
@pytest.mark.anyio
async def test_a_stream_named_error_takes_publishes(
    make: Factory, topic: str, raw_nats: Any
) -> None:
    """Publishing to a stream named 'error' succeeds: its acks read {"stream":"error",...}
    and were taken for error answers, failing every publish of events it stored."""
    js = raw_nats.jetstream()
    connector = make(streams={topic: "error"}, stream=StreamSettings(storage="memory"))
    try:
        async with connector:
            subject, _ = connector.route(topic, PublishError)
            await connector.publish(topic, _events(2))
        info = await js.stream_info("error", subjects_filter=subject)
        assert (info.state.subjects or {}).get(subject) == 2
    finally:
        with contextlib.suppress(Exception):  # clean-up only
            await js.delete_stream("error")


@pytest.mark.nats
@pytest.mark.anyio
async def test_a_group_resumes_where_it_was_whatever_start_says(
    connector: NatsConnector, topic: str
) -> None:
    """A group that exists already resumes from its position; 'earliest' is ignored."""
    async with connector.subscribe(topic, "g", start="earliest") as consumer:
        await connector.publish(topic, _events(5))
        assert len(await collect(consumer, 5, timeout=10)) == 5
    await connector.publish(topic, _events(1, subject="later"))
    async with connector.subscribe(topic, "g", start="earliest") as consumer:
        got = await collect(consumer, 6, timeout=1.5)
    assert [d.event.subject for d in got] == ["later"]


@pytest.mark.nats
@pytest.mark.anyio
async def test_start_time_in_the_past_replays_from_then(
    connector: NatsConnector, topic: str
) -> None:
    """A new group starting an hour ago gets what was stored in that hour."""
    await connector.publish(topic, _events(4))
    since = datetime.now(UTC) - timedelta(hours=1)
    async with connector.subscribe(topic, "timed", start=since) as consumer:
        got = await collect(consumer, 4, timeout=10)
    assert sorted(d.event.data["n"] for d in got) == [0, 1, 2, 3]


# -- core mode ----------------------------------------------------------------------------------


@pytest.mark.nats
@pytest.mark.anyio
async def test_core_member_leaving_hands_its_events_to_a_member_elsewhere(
    make: Factory, topic: str
) -> None:
    """Unacked events of a leaving member reach the group's member in another connector."""
    async with make(mode="core") as here, make(mode="core") as there:
        leaving = here.subscribe(topic, "g")
        await leaving.start()
        await here.publish(topic, _events(10))
        taken = await collect(leaving, 10, timeout=10, ack=False)
        assert len(taken) == 10
        async with there.subscribe(topic, "g") as staying:
            await leaving.close()
            handed = await collect(staying, 10, timeout=10)
    assert sorted(d.event.data["n"] for d in handed) == list(range(10))
    assert {d.attempt for d in handed} == {2}


@pytest.mark.nats
@pytest.mark.anyio
async def test_core_member_leaving_hands_on_what_it_never_fetched(
    make: Factory, topic: str
) -> None:
    """What a leaving member received and never fetched reaches the group's other member
    as a first delivery; what it fetched and did not ack, as a second."""
    async with make(mode="core") as here, make(mode="core") as there:
        leaving = here.subscribe(topic, "g")
        await leaving.start()
        await here.publish(topic, _events(10))
        taken = await leaving.fetch(3, timeout=10)
        async with there.subscribe(topic, "g") as staying:
            await leaving.close()
            handed = await collect(staying, 10, timeout=10)
    fetched = {d.event.data["n"] for d in taken}
    assert sorted(d.event.data["n"] for d in handed) == list(range(10))
    assert {d.event.data["n"]: d.attempt for d in handed} == {
        n: 2 if n in fetched else 1 for n in range(10)
    }


@pytest.mark.nats
@pytest.mark.anyio
async def test_core_full_buffer_holds_messages_back_without_loss(make: Factory, topic: str) -> None:
    """With a tiny buffer, messages wait in the client's queue and all arrive."""
    connector = make(mode="core", core=CoreSettings(buffer=5))
    async with connector, connector.subscribe(topic, "g") as consumer:
        await connector.publish(topic, _events(300))
        got = await collect(consumer, 300, timeout=10)
    assert sorted(d.event.data["n"] for d in got) == list(range(300))


@pytest.mark.nats
@pytest.mark.anyio
async def test_core_member_past_its_limits_loses_messages_and_says_so(
    make: Factory, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Past buffer and pending_limit the client drops messages, with a warning."""
    caplog.set_level(logging.WARNING, logger="eventmesh_nats")
    connector = make(mode="core", core=CoreSettings(buffer=5, pending_limit=20))
    async with connector, connector.subscribe(topic, "g") as consumer:
        await connector.publish(topic, _events(500))
        await anyio.sleep(0.5)
        got = await collect(consumer, 500, timeout=1.5)
    assert 5 <= len(got) < 500
    assert any("cannot keep up" in record.getMessage() for record in caplog.records)


@pytest.mark.nats
@pytest.mark.anyio
async def test_core_member_past_its_byte_limit_drops_and_takes_new_messages_after(
    make: Factory, topic: str, raw_nats: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Past core.pending_bytes the client drops messages for a member, with the warning
    it gives past the count (unbounded, a slow member held any number of bytes); what
    the member fetched stops counting, so new messages are taken again."""
    caplog.set_level(logging.WARNING, logger="eventmesh_nats")
    blob = b"x" * 4096
    connector = make(mode="core", core=CoreSettings(pending_bytes=64 * 1024))
    async with connector, connector.subscribe(topic, "g") as consumer:
        subject, _ = connector.route(topic, PublishError)
        received = connector.nc.stats["in_msgs"]
        for _ in range(100):
            await raw_nats.publish(subject, blob)
        await raw_nats.flush()
        # Every message reached the member's client, queued or dropped (a flush on each
        # side does not say so: nats-py writes its PING ahead of buffered publishes).
        await eventually(lambda: connector.nc.stats["in_msgs"] >= received + 100)
        first = await consumer.fetch(1000, timeout=5)
        assert 0 < len(first) < 100
        assert sum(len(d.event.data) for d in first) <= 64 * 1024
        warnings = [r.getMessage() for r in caplog.records if "cannot keep up" in r.getMessage()]
        assert warnings
        assert "core.pending_bytes" in warnings[0]
        for _ in range(10):
            await raw_nats.publish(subject, blob)
        await raw_nats.flush()
        second = await collect(consumer, 10, timeout=10)
    assert len(second) == 10


@pytest.mark.nats
@pytest.mark.anyio
async def test_core_start_at_a_future_time_skips_what_comes_before(
    make: Factory, topic: str
) -> None:
    """A core member told to start at a later time ignores what arrives before it."""
    async with make(mode="core") as connector:
        soon = datetime.now(UTC) + timedelta(seconds=1.5)
        async with connector.subscribe(topic, "g", start=soon) as consumer:
            await connector.publish(topic, _events(3, subject="early"))
            assert datetime.now(UTC) < soon, "the machine was too slow to publish 'early' in time"
            await eventually(lambda: datetime.now(UTC) > soon, what="the start time to pass")
            await connector.publish(topic, _events(2, subject="late"))
            got = await collect(consumer, 5, timeout=1.5)
    assert [d.event.subject for d in got] == ["late", "late"]


def _loop_blocked(signum: int, frame: object) -> None:
    raise TimeoutError("the event loop was held: nothing else ran for 20 s")


@pytest.mark.nats
@pytest.mark.anyio
async def test_core_fetch_made_before_the_start_time_leaves_the_loop_free(
    make: Factory, topic: str
) -> None:
    """A fetch made before a core member's start time (as the dispatcher makes it, with no
    timeout) drops what arrives before that time and waits for it without holding the
    event loop; it spun on the queued messages, and the start time never came. (SIGALRM
    turns such a hang into a failure: nothing in the loop could.)"""
    previous = signal.signal(signal.SIGALRM, _loop_blocked)
    signal.alarm(20)
    try:
        async with make(mode="core") as connector:
            soon = datetime.now(UTC) + timedelta(seconds=3)
            async with connector.subscribe(topic, "g", start=soon) as consumer:
                await connector.publish(topic, _events(50, subject="early"))
                assert datetime.now(UTC) < soon, "the machine was too slow to publish 'early'"
                got: list[Delivery] = []

                async def fetch_all() -> None:
                    while len(got) < 2:
                        got.extend(await consumer.fetch(5))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(fetch_all)
                    await eventually(lambda: datetime.now(UTC) > soon, what="the start time")
                    await connector.publish(topic, _events(2, subject="late"))
                    await eventually(lambda: len(got) >= 2, timeout=10, what="the late events")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [d.event.subject for d in got] == ["late", "late"]


@pytest.mark.nats
@pytest.mark.anyio
async def test_core_messages_queued_at_the_start_time_are_dropped_by_their_event_time(
    make: Factory, topic: str
) -> None:
    """What a core member finds queued when it sees its start time come was sent before
    it, unless its event says otherwise: the loop may see the start time late, after
    messages sent since were queued, and those were dropped with the rest (a CI run under
    load lost both events of the test above). Core NATS says nothing of when a message was
    sent, so the event's time decides, as Kafka's start from a time reads timestamps."""
    async with make(mode="core") as connector:
        soon = datetime.now(UTC) + timedelta(seconds=1)
        async with connector.subscribe(topic, "g", start=soon) as consumer:
            await connector.publish(topic, _events(2, subject="before"))
            stamped = soon + timedelta(seconds=5)
            await connector.publish(topic, _events(2, subject="after", time=stamped))
            assert datetime.now(UTC) < soon, "the machine was too slow to publish in time"
            await anyio.sleep((soon - datetime.now(UTC)).total_seconds() + 0.2)  # no fetch
            got: list[Delivery] = []
            with anyio.fail_after(10):
                while len(got) < 2:
                    got.extend(await consumer.fetch(10, timeout=5))
    assert [d.event.subject for d in got] == ["after", "after"]


@pytest.mark.nats
@pytest.mark.anyio
async def test_jetstream_settings_reach_the_consumer(make: Factory, topic: str) -> None:
    """ack_wait, max_deliver and max_ack_pending are set on the group's consumer."""
    settings = ConsumerSettings(ack_wait=7, max_deliver=9, max_ack_pending=33)
    connector = make(consumer=settings)
    async with connector, connector.subscribe(topic, "tuned"):
        _, stream = connector.route(topic, PublishError)
        info = await connector.js.consumer_info(stream, "tuned")
    assert (info.config.ack_wait, info.config.max_deliver, info.config.max_ack_pending) == (
        7,
        9,
        33,
    )


@pytest.mark.nats
@pytest.mark.anyio
async def test_a_deleted_group_consumer_is_made_again(
    make: Factory, topic: str, raw_nats: Any
) -> None:
    """A member whose consumer was deleted under it makes it again and gets events."""
    connector = make(consumer=ConsumerSettings(recheck=0.3))
    async with connector, connector.subscribe(topic, "phoenix") as consumer:
        _, stream = connector.route(topic, PublishError)
        await raw_nats.jetstream().delete_consumer(stream, "phoenix")
        assert await consumer.fetch(10, timeout=0.5) == []  # finds it gone, makes it again
        await connector.publish(topic, _events(3))
        got = await collect(consumer, 3, timeout=10)
    assert sorted(d.event.data["n"] for d in got) == [0, 1, 2]


@pytest.mark.nats
@pytest.mark.anyio
@pytest.mark.parametrize("seen", [True, False], ids=["after-a-delivery", "before-any"])
async def test_a_consumer_made_again_delivers_what_was_stored_while_it_was_gone(
    make: Factory, topic: str, raw_nats: Any, seen: bool
) -> None:
    """A 'latest' member whose consumer is deleted, with events stored (and acked to
    their producer) before it notices, gets those events from the consumer it makes
    again: it resumes from when it joined (or the oldest message it holds, if older),
    not from 'latest' again, which skipped them."""
    connector = make(consumer=ConsumerSettings(recheck=0.3))
    async with connector, connector.subscribe(topic, "phoenix") as consumer:
        if seen:
            await connector.publish(topic, _events(1))
            (first,) = await collect(consumer, 1, timeout=10)
            await first.ack()
        _, stream = connector.route(topic, PublishError)
        await raw_nats.jetstream().delete_consumer(stream, "phoenix")
        gone = [Event(type="t", source="/s", id=f"gone-{n}") for n in range(3)]
        await connector.publish(topic, gone)  # stored while no consumer exists
        got: set[str] = set()
        with anyio.fail_after(30):
            while not {"gone-0", "gone-1", "gone-2"} <= got:
                for delivery in await consumer.fetch(10, timeout=0.5):
                    got.add(delivery.event.id)
                    await delivery.ack()


@pytest.mark.nats
@pytest.mark.anyio
async def test_a_group_name_taken_by_a_push_consumer_is_refused(
    make: Factory, topic: str, raw_nats: Any
) -> None:
    """A push consumer already holding the group's name is not silently reused."""
    connector = make()
    async with connector:
        _, stream = connector.route(topic, PublishError)
        await connector.publish(topic, _events(1))
        await raw_nats.jetstream().add_consumer(
            stream, durable_name="taken", deliver_subject=f"push.{uuid.uuid4().hex}"
        )
        with pytest.raises(SubscribeError, match="push consumer"):
            await connector.subscribe(topic, "taken").start()


@pytest.mark.nats
@pytest.mark.anyio
@pytest.mark.parametrize("policy", [AckPolicy.ALL, AckPolicy.NONE])
async def test_a_group_consumer_without_explicit_acks_is_refused(
    make: Factory, topic: str, raw_nats: Any, policy: AckPolicy
) -> None:
    """A pull consumer holding the group's name with ack policy 'all' or 'none' (where
    an event still being handled counts as acked) is refused, naming the consumer, its
    policy and what to do, not used at most once."""
    connector = make()
    async with connector:
        subject, stream = connector.route(topic, PublishError)
        await connector.publish(topic, _events(1))
        await raw_nats.jetstream().add_consumer(
            stream, durable_name="lax", ack_policy=policy, filter_subject=subject
        )
        with pytest.raises(SubscribeError) as info:
            await connector.subscribe(topic, "lax").start()
    message = str(info.value)
    assert f"'lax' exists with ack policy {policy.value!r}" in message
    assert "explicit acks" in message
    assert "delete the consumer" in message


@pytest.mark.nats
@pytest.mark.anyio
async def test_one_member_gets_first_deliveries_in_stream_order(
    connector: NatsConnector, topic: str
) -> None:
    """With a single member, JetStream hands out events in the order they were stored.

    The connector does not claim ordered_by_key (a second member breaks it); this pins
    down the single-member behaviour that docs/nats.md describes.
    """
    async with connector.subscribe(topic, "solo", start="earliest") as consumer:
        for i in range(0, 300, 50):
            await connector.publish(topic, _events(300)[i : i + 50])
        got = await collect(consumer, 300, timeout=10)
    assert [d.offset for d in got] == sorted(d.offset for d in got)
