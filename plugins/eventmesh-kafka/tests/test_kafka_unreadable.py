"""Records that cannot be read as events: ones aiokafka cannot decode (a header name
that is not UTF-8, which Kafka never checks) and ones whose timestamp no datetime holds.
Each is read wrapped at its offset, nothing around it is lost, and the reader goes on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from eventmesh.bindings.kafka import MESSAGE_TYPE
from eventmesh.event import Event
from eventmesh.testing import collect
from eventmesh_kafka import KafkaConfig, KafkaConnector

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]

Produce = Callable[[str, list[Any]], Awaitable[None]]


def ce(event_id: str, **record: Any) -> dict[str, Any]:
    """A binary-mode CloudEvent record for the produce_raw fixture."""
    headers = [("ce_specversion", "1.0"), ("ce_id", event_id), ("ce_source", "/s")]
    return {"value": "{}", "headers": [*headers, ("ce_type", "t")], **record}


def check_unreadable(event: Event, topic: str, partition: int, offset: int) -> None:
    assert event.id == f"{topic}-{partition}-{offset}"
    assert event.type == MESSAGE_TYPE
    assert "cannot decode" in str(event.extensions["cloudeventerror"])
    assert "UnicodeDecodeError" in str(event.extensions["cloudeventerror"])


SENDS: list[Any] = [
    ce("a0"),
    ce("b0", partition=1),
    ce("a1"),
    ce("b1", partition=1),
    ce("a2"),
    {"value": "x", "key": "k", "unreadable": True},
    ce("a3"),
    ce("b2", partition=1),
    ce("a4"),
]


async def test_a_member_delivers_an_unreadable_record_wrapped_and_loses_nothing(
    kafka: KafkaConnector, kafka_bootstrap: str, produce_raw: Produce, topic: str
) -> None:
    """The records before an unreadable one (on its partition and others) are delivered,
    it is delivered wrapped at its offset, the ones after it follow, and the group
    commits past all of them once they are acked."""
    async with kafka.subscribe(topic, "g", start="earliest") as consumer:
        await produce_raw(topic, SENDS)
        got = await collect(consumer, len(SENDS), timeout=60)
        assert await consumer.fetch(10, timeout=0.2) == []
    by_partition: dict[int, list[tuple[int, str]]] = {0: [], 1: []}
    for delivery in got:
        by_partition[delivery.partition].append((delivery.offset, delivery.event.id))
    assert by_partition[1] == [(0, "b0"), (1, "b1"), (2, "b2")]
    assert by_partition[0] == [
        (0, "a0"),
        (1, "a1"),
        (2, "a2"),
        (3, f"{topic}-0-3"),
        (4, "a3"),
        (5, "a4"),
    ]
    (wrapped,) = [d for d in got if d.offset == 3 and d.partition == 0]
    check_unreadable(wrapped.event, topic, 0, 3)
    assert await _committed(kafka_bootstrap, topic) == {0: 6, 1: 3, 2: 0, 3: 0}


async def test_every_offset_of_a_batch_with_an_unreadable_record_is_delivered_once(
    kafka: KafkaConnector, produce_raw: Produce, topic: str
) -> None:
    """aiokafka cannot read past an undecodable record inside its record batch: the
    records after it in the batch come wrapped too, each once, and nothing is skipped."""
    sends = [ce("a0"), [ce("a1"), {"value": "x", "unreadable": True}, ce("a2")], ce("a3")]
    async with kafka.subscribe(topic, "g", start="earliest") as consumer:
        await produce_raw(topic, sends)
        got = await collect(consumer, 5, timeout=60)
        assert await consumer.fetch(10, timeout=0.2) == []
    assert [d.offset for d in got] == [0, 1, 2, 3, 4]
    ids = [d.event.id for d in got]
    assert ids[:2] == ["a0", "a1"]
    assert ids[4] == "a3"
    check_unreadable(got[2].event, topic, 0, 2)


async def test_read_returns_an_unreadable_record_wrapped_with_its_neighbours(
    kafka: KafkaConnector, produce_raw: Produce, topic: str
) -> None:
    """Browsing a topic with an undecodable record pages through it: it is read wrapped."""
    await kafka.publish(topic, [Event(type="t", source="/s", id="first")])
    await produce_raw(topic, SENDS)
    stored = await kafka.read(topic, limit=50)
    assert len(stored) == len(SENDS) + 1
    assert "first" in {s.event.id for s in stored}  # on any partition
    assert [s.event.id for s in stored if s.event.id[0] == "b"] == ["b0", "b1", "b2"]
    (bad,) = [s for s in stored if s.event.type == MESSAGE_TYPE]
    check_unreadable(bad.event, topic, bad.partition, bad.offset)
    zero = [s.event.id for s in stored if s.partition == 0]
    assert [i for i in zero if i.startswith("a")] == ["a0", "a1", "a2", "a3", "a4"]


async def test_the_state_loads_and_watches_past_an_unreadable_record(
    kafka_config: KafkaConfig, produce_raw: Produce, topic: str
) -> None:
    """A state topic with an undecodable record still loads and is watched: the record is
    skipped with a warning, the keys before and after it are there."""
    config = msgspec.structs.replace(kafka_config, state_topic_prefix=f"{topic}.")
    async with KafkaConnector(config) as writer:
        store = writer.state("b")
        await store.put("a", b"1")
        await produce_raw(store.topic, [{"key": "k", "value": "v", "unreadable": True}])
        await store.put("b", b"2")
    async with KafkaConnector(config) as reader:
        assert await reader.state("b").load() == {"a": b"1", "b": b"2"}
    async with KafkaConnector(config) as watcher:
        changes: list[tuple[str, bytes | None]] = []
        with anyio.fail_after(60):
            async for change in watcher.state("b").watch():
                changes.append(change)
                if change[0] == "b":
                    break
    assert changes == [("a", b"1"), ("b", b"2")]


FAR_FUTURE_MS = 300_000_000_000_000
"""A CreateTime in year 11476: Kafka stores it on a topic that allows it."""


async def _topic_taking_any_time(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {"message.timestamp.after.max.ms": str(2**63 - 1)}
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=config)])
    finally:
        await admin.close()


@pytest.mark.parametrize("together", [False, True], ids=["apart", "one-batch"])
async def test_a_record_stamped_past_year_9999_is_delivered_without_a_time(
    kafka: KafkaConnector, kafka_bootstrap: str, produce_raw: Produce, topic: str, together: bool
) -> None:
    """A record whose timestamp no datetime holds is delivered (wrapped, no time), the
    records around it too, and the group commits past all three once they are acked."""
    await _topic_taking_any_time(kafka_bootstrap, topic)
    records = [ce("a0"), {"value": "plain", "timestamp_ms": FAR_FUTURE_MS}, ce("a1")]
    async with kafka.subscribe(topic, "g", start="earliest") as consumer:
        await produce_raw(topic, [records] if together else records)
        got = await collect(consumer, 3, timeout=60)
        assert await consumer.fetch(10, timeout=0.2) == []
    assert [(d.offset, d.event.id) for d in got] == [(0, "a0"), (1, f"{topic}-0-1"), (2, "a1")]
    assert got[1].event.data == b"plain"
    assert got[1].event.time is None
    assert got[1].timestamp is None
    stored = await kafka.read(topic)
    assert sorted((s.offset, s.event.id, s.timestamp is None) for s in stored) == [
        (0, "a0", False),
        (1, f"{topic}-0-1", True),
        (2, "a1", False),
    ]
    assert await _committed(kafka_bootstrap, topic) == {0: 3}


async def _committed(bootstrap: str, topic: str, group: str = "g") -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
