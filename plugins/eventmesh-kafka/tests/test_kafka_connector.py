"""The Kafka connector's own promises: config, registration, errors, foreign records."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.errors import KafkaError

import eventmesh
from eventmesh.connectors import available_connectors, load_connector
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    ConnectError,
    PublishError,
    RejectedError,
    SubscribeError,
)
from eventmesh.event import Event
from eventmesh.testing import collect, eventually
from eventmesh_kafka import KafkaConfig, KafkaConnector


@pytest.mark.parametrize("name", ["eventmesh_kafka", "eventmesh.bindings.kafka"])
def test_the_public_surface_is_sorted_and_complete(name: str) -> None:
    """__all__ of the plugin and of the binding is sorted and names only what exists."""
    module = importlib.import_module(name)
    isort_style = sorted(module.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    assert module.__all__ in (sorted(module.__all__), isort_style)
    for item in module.__all__:
        assert hasattr(module, item), f"{name}.{item} is listed but missing"


def test_the_connector_is_found_by_its_entry_point() -> None:
    """'type: kafka' resolves to KafkaConnector through the eventmesh.connectors group."""
    assert "kafka" in available_connectors()
    assert load_connector("kafka") is KafkaConnector
    assert KafkaConnector.Config is KafkaConfig


def test_the_config_loader_checks_kafka_keys() -> None:
    """A mesh config builds a KafkaConfig; a misspelled key is an error naming it."""
    mesh = eventmesh.Mesh(
        {"connectors": {"default": {"type": "kafka", "bootstrap_servers": "127.0.0.1:1"}}}
    )
    connector = mesh.connectors["default"]
    assert isinstance(connector, KafkaConnector)
    assert connector.config.bootstrap_servers == "127.0.0.1:1"
    with pytest.raises(ConfigError, match="bootstrap_server"):
        eventmesh.Mesh({"connectors": {"default": {"type": "kafka", "bootstrap_server": "x"}}})
    with pytest.raises(ConfigError, match="partitions"):
        eventmesh.Mesh({"connectors": {"default": {"type": "kafka", "partitions": 0}}})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"heartbeat_interval_ms": 10_000}, "heartbeat_interval_ms"),
        ({"security_protocol": "SASL_SSL"}, "sasl_mechanism"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "username"),
        ({"sasl_mechanism": "PLAIN"}, "SASL_PLAINTEXT"),
        ({"ssl_cafile": "/ca.pem"}, "security_protocol SSL"),
        ({"mode": "batch"}, "mode"),
        ({"replication_factor": 0}, "replication_factor"),
        ({"bootstrap_servers": " "}, "bootstrap_servers"),
    ],
)
def test_inconsistent_settings_are_refused(options: dict[str, object], message: str) -> None:
    """Settings that cannot work together fail when the config loads, naming the key."""
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(options, KafkaConfig)


def test_the_password_is_not_shown() -> None:
    """repr of a config hides sasl_plain_password."""
    config = KafkaConfig(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="mesh",
        sasl_plain_password="hunter2",
    )
    assert "hunter2" not in repr(config)
    assert "sasl_plain_username='mesh'" in repr(config)
    assert config.servers == ["127.0.0.1:9092"]


@pytest.mark.anyio
async def test_an_unreachable_broker_is_a_connect_error() -> None:
    """Opening against a port nothing listens on raises ConnectError, from aiokafka's error."""
    connector = KafkaConnector(KafkaConfig(bootstrap_servers="127.0.0.1:1"))
    with anyio.fail_after(20), pytest.raises(ConnectError) as info:
        await connector.open()
    assert "127.0.0.1:1" in str(info.value)
    assert "scripts/kafka.sh" in str(info.value)
    assert isinstance(info.value.__cause__, KafkaError)


@pytest.mark.kafka
@pytest.mark.anyio
async def test_an_event_too_large_is_rejected(kafka_config: KafkaConfig, topic: str) -> None:
    """An event above max_request_size is a RejectedError (never retried) naming the
    topic and the setting, raised before it is handed to the client."""
    config = msgspec.structs.replace(kafka_config, max_request_size=2_000)
    async with KafkaConnector(config) as connector:
        with pytest.raises(RejectedError) as info:
            await connector.publish(topic, [Event(type="t", source="/s", data="x" * 5_000)])
    assert topic in str(info.value)
    assert "max_request_size" in str(info.value)


@pytest.mark.kafka
@pytest.mark.anyio
async def test_a_topic_the_broker_cannot_create_is_a_publish_error(
    kafka_config: KafkaConfig, topic: str
) -> None:
    """The broker's refusal to create a topic (3 replicas on 1 broker) says what to change."""
    config = msgspec.structs.replace(kafka_config, replication_factor=3)
    async with KafkaConnector(config) as connector:
        with pytest.raises(PublishError, match="replication_factor") as info:
            await connector.publish(topic, [Event(type="t", source="/s")])
        with pytest.raises(SubscribeError, match="replication"):
            await connector.subscribe(topic, "g").start()
    assert topic in str(info.value)


@pytest.mark.kafka
@pytest.mark.anyio
async def test_invalid_names_are_refused_up_front(kafka: KafkaConnector) -> None:
    """Bad topic and group names raise the connector's errors before reaching Kafka: a
    topic name Kafka never accepts is RejectedError (400, never retried)."""
    with pytest.raises(RejectedError, match="not a valid Kafka topic name"):
        kafka.subscribe("a/b", "g")
    with pytest.raises(RejectedError, match="249"):
        await kafka.publish("x" * 250, [Event(type="t", source="/s")])
    with pytest.raises(SubscribeError, match="group"):
        kafka.subscribe("fine", "")
    with pytest.raises(SubscribeError, match="start"):
        kafka.subscribe("fine", "g", start="middle")  # type: ignore[arg-type]


@pytest.mark.kafka
@pytest.mark.anyio
async def test_health_follows_the_connection(kafka_config: KafkaConfig) -> None:
    """health() is True while the broker answers and False once closed."""
    connector = KafkaConnector(kafka_config)
    assert not await connector.health()
    async with connector:
        assert await connector.health()
    assert not await connector.health()


@pytest.mark.kafka
@pytest.mark.anyio
async def test_structured_mode_keeps_extension_types(kafka_config: KafkaConfig, topic: str) -> None:
    """In structured mode integers and booleans come back as they were sent."""
    config = msgspec.structs.replace(kafka_config, mode="structured")
    sent = Event(
        type="t",
        source="/s",
        time=datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        data=[1, "two", None],
        extensions={"count": 3, "flag": False, "partitionkey": "k"},
    )
    async with KafkaConnector(config) as connector, connector.subscribe(topic, "g") as consumer:
        await connector.publish(topic, [sent])
        (got,) = await collect(consumer, 1, timeout=20)
    assert got.event == sent
    assert got.key == "k"


@pytest.mark.kafka
@pytest.mark.anyio
async def test_foreign_and_broken_records_are_delivered_wrapped(
    kafka: KafkaConnector, kafka_bootstrap: str, topic: str
) -> None:
    """Plain records and broken CloudEvents arrive wrapped, and do not block what follows."""
    async with kafka.subscribe(topic, "g", start="earliest") as consumer:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"plain text", key=b"k", partition=0)
            await producer.send_and_wait(
                topic, b"{}", headers=[("ce_specversion", b"1.0")], key=b"k", partition=0
            )
        finally:
            await producer.stop()
        await kafka.publish(topic, [Event(type="after", source="/s")])
        got = {d.event.id: d.event for d in await collect(consumer, 3, timeout=20)}
    plain, broken = got.pop(f"{topic}-0-0"), got.pop(f"{topic}-0-1")
    assert plain.id == f"{topic}-0-0"
    assert plain.source == f"kafka://{topic}"
    assert plain.type == "io.eventmesh.kafka.message"
    assert plain.data == b"plain text"
    assert plain.partitionkey == "k"
    assert plain.time is not None
    assert broken.id == f"{topic}-0-1"
    assert "id" in str(broken.extensions["cloudeventerror"])
    assert [e.type for e in got.values()] == ["after"]


def _keyed(count: int, tag: str) -> list[Event]:
    return [
        Event(type="t", source="/s", subject=tag, data={"n": i}, extensions={"partitionkey": "one"})
        for i in range(count)
    ]


@pytest.mark.kafka
@pytest.mark.anyio
async def test_a_group_with_a_commit_resumes_from_it_whatever_start_says(
    kafka: KafkaConnector, topic: str
) -> None:
    """A group that committed resumes where it stopped, even when it rejoins at 'latest'."""
    async with kafka.subscribe(topic, "g", start="earliest") as consumer:
        await kafka.publish(topic, _keyed(5, "first"))
        assert len(await collect(consumer, 5, timeout=20)) == 5
    await kafka.publish(topic, _keyed(3, "while away"))
    async with kafka.subscribe(topic, "g", start="latest") as consumer:
        got = await collect(consumer, 3, timeout=20)
    assert [d.event.subject for d in got] == ["while away"] * 3


@pytest.mark.kafka
@pytest.mark.anyio
async def test_a_nacked_event_holds_the_commit_back(kafka: KafkaConnector, topic: str) -> None:
    """An event nacked with a long delay holds the commit: the next member starts at it."""
    async with kafka.subscribe(topic, "g") as consumer:
        await kafka.publish(topic, _keyed(3, "x"))
        first, *rest = await collect(consumer, 3, timeout=20, ack=False)
        await first.nack(60)
        for delivery in rest:
            await delivery.ack()
        assert await consumer.fetch(10, timeout=0.5) == []
    async with kafka.subscribe(topic, "g") as consumer:
        again = await collect(consumer, 3, timeout=20)
    assert [d.offset for d in again] == [first.offset, *(d.offset for d in rest)]
    assert again[0].event == first.event


@pytest.mark.kafka
@pytest.mark.anyio
async def test_an_event_too_large_by_its_headers_is_rejected_before_any_is_sent(
    kafka: KafkaConnector, topic: str
) -> None:
    """An event whose extension makes its record too large is refused as a whole call:
    RejectedError, and none of the call's events is stored."""
    small = Event(type="t", source="/s", id="first", data={"a": 1})
    large = Event(type="t", source="/s", id="second", extensions={"blob": "x" * 1_100_000})
    await kafka.publish(topic, [Event(type="t", source="/s", id="before")])
    with pytest.raises(RejectedError, match="event 1 of the call"):
        await kafka.publish(topic, [small, large])
    await kafka.publish(topic, [Event(type="t", source="/s", id="after")])
    stored = await kafka.read(topic, limit=10)
    assert sorted(s.event.id for s in stored) == ["after", "before"]


@pytest.mark.kafka
@pytest.mark.anyio
@pytest.mark.parametrize("steps", [0, 1, 2, 3, 5, 10, 30, 100, 300])
async def test_a_publish_racing_close_returns_or_raises_closed_error(
    kafka_config: KafkaConfig, topic: str, steps: int
) -> None:
    """close() while a publish (of a topic not yet created) is on its way: the publish
    returns or raises ClosedError, never a client's AttributeError, whichever await it
    was at (``steps`` loop turns after it started)."""
    outcome: list[BaseException | None] = []

    async def publish(connector: KafkaConnector) -> None:
        try:
            await connector.publish(topic, [Event(type="t", source="/s")])
        except Exception as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    connector = KafkaConnector(kafka_config)
    await connector.open()
    async with anyio.create_task_group() as tg:
        tg.start_soon(publish, connector)
        for _ in range(steps):
            await anyio.lowlevel.checkpoint()
        await connector.close()
    (result,) = outcome
    assert result is None or isinstance(result, ClosedError), repr(result)


@pytest.mark.kafka
@pytest.mark.anyio
async def test_nacked_events_waiting_for_their_delay_are_bounded(
    kafka_config: KafkaConfig, topic: str
) -> None:
    """While max_poll_records nacked events wait for their delay, the member reads no new
    records; once they are handed out again it goes on, and every event gets through."""
    config = msgspec.structs.replace(kafka_config, max_poll_records=20)
    total, batch, most = 60, 10, 0
    acked: set[str] = set()
    waiting = 0  # nacked, not yet handed out again
    async with (
        KafkaConnector(config) as connector,
        connector.subscribe(topic, "g", start="earliest") as consumer,
    ):
        await connector.publish(topic, [Event(type="t", source="/s") for _ in range(total)])
        with anyio.fail_after(120):
            while len(acked) < total:
                for delivery in await consumer.fetch(batch, timeout=1):
                    if delivery.attempt == 1:
                        await delivery.nack(1.0)
                        waiting += 1
                    else:
                        waiting -= 1
                        acked.add(delivery.event.id)
                        await delivery.ack()
                most = max(most, waiting)
    assert most <= 20 + batch


@pytest.mark.kafka
@pytest.mark.anyio
async def test_latest_on_a_partition_added_later_starts_when_start_returned(
    kafka_config: KafkaConfig, kafka_bootstrap: str, topic: str
) -> None:
    """A group at 'latest' that gets a partition added after it joined reads it from when
    start() returned, so events stored there before the member noticed it are not lost."""
    config = msgspec.structs.replace(kafka_config, partitions=1)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    async with KafkaConnector(config) as connector, connector.subscribe(topic, "g") as consumer:
        await admin.start()
        await producer.start()
        try:
            await admin.create_partitions({topic: NewPartitions(total_count=2)})
            for name in ("early", "early too"):
                headers = [("ce_specversion", b"1.0"), ("ce_id", name.encode())]
                headers += [("ce_source", b"/s"), ("ce_type", b"t")]
                await producer.send_and_wait(topic, b"{}", partition=1, headers=headers)
            ids: list[str] = []

            async def holds_the_new_partition() -> bool:
                # aiokafka notices new partitions at its next metadata refresh (every
                # 5 minutes by default): ask for one now.
                consumer._client._client.force_metadata_update()
                ids.extend(d.event.id for d in await consumer.fetch(10, timeout=0.2))
                return 1 in consumer._parts

            await eventually(holds_the_new_partition, timeout=60, what="partition 1 held")
            await connector.publish(topic, [Event(type="t", source="/s", id="late")])
            with anyio.fail_after(60):
                while "late" not in ids:
                    ids.extend(d.event.id for d in await consumer.fetch(10, timeout=0.5))
        finally:
            await producer.stop()
            await admin.close()
    assert sorted(ids) == ["early", "early too", "late"]  # "late" may be on partition 0
