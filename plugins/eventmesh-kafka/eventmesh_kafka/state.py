"""The mesh's durable key-value state on Kafka: one compacted topic per bucket.

:meth:`KafkaConnector.state` returns a :class:`KafkaStateStore` whose map is the topic
``{state_topic_prefix}{bucket}`` (``eventmesh.state.subscriptions`` by default), created
on first use with one partition and ``cleanup.policy=compact``, so Kafka keeps the last
record of every key for ever:

* ``put`` is a keyed record sent with ``acks=all`` (written to every in-sync replica
  when it returns); ``delete`` a tombstone (a record with no value) for the key;
* ``load`` reads the topic from its beginning up to the end offsets it found when it
  began (no consumer group: nothing is committed);
* ``watch`` keeps reading from where the last ``load`` stopped, so a change made between
  the two is not missed (without a load, from the beginning: every key is reported, its
  current value last, as the contract allows); it ends when the connector closes.

Every process that names the same topic on the same cluster sees the same map.
aiokafka's exceptions become ``ConnectError`` (reading, creating the topic) or
``PublishError`` (writing) here, through :mod:`eventmesh_kafka._errors`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from eventmesh.connectors.base import StateStore
from eventmesh.errors import ClosedError, ConnectError, PublishError
from eventmesh_kafka._errors import (
    CLIENT_ERRORS,
    describe,
    is_success,
    read_past_unreadable,
    refused,
    tolerated,
    translated,
)

if TYPE_CHECKING:
    from eventmesh_kafka.connector import KafkaConnector

__all__ = ["KafkaStateStore"]

log = logging.getLogger(__name__)

_COMPACT: Final = {"cleanup.policy": "compact"}
_POLL_MS: Final = 1_000
"""The longest single wait for new records while loading or watching."""
_SALVAGE: Final = 500
"""Records read at most by one pass past a record that cannot be decoded."""


class KafkaStateStore(StateStore):
    """A bucket of the mesh's state kept in a compacted Kafka topic (module docstring)."""

    def __init__(self, connector: KafkaConnector, bucket: str) -> None:
        self._connector = connector
        self.topic = f"{connector.config.state_topic_prefix}{bucket}"
        connector.check_topic(self.topic)
        self._where = f"Kafka state topic {self.topic!r}"
        self._lock = anyio.Lock()
        self._partitions: list[TopicPartition] = []
        self._producer: Any = None
        self._readers: set[Any] = set()
        self._loaded: dict[int, int] | None = None
        """The end offsets the last load read up to: where a watch begins."""
        self._closed = False

    # -- setup and teardown ----------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"connector {self._connector.name!r} is closed")

    async def _ensure_topic(self) -> list[TopicPartition]:
        """Create the compacted topic once (unless ``create_topics`` is off) and learn
        its partitions."""
        if self._partitions:
            return self._partitions
        async with self._lock:
            self._check()
            if not self._partitions:
                self._partitions = await self._setup()
        return self._partitions

    async def _setup(self) -> list[TopicPartition]:
        config = self._connector.config
        options = self._connector.client_options()
        where = f"setting up {self._where} (cleanup.policy=compact)"
        with translated(ConnectError, where, setup=True):
            admin = AIOKafkaAdminClient(**options)
        try:
            with translated(ConnectError, where):
                await admin.start()
                if config.create_topics:
                    replicas = config.replication_factor
                    if replicas is None:
                        cluster = await admin.describe_cluster()
                        replicas = max(1, min(3, len(cluster.get("brokers", ()))))
                    topic = NewTopic(self.topic, 1, replicas, topic_configs=dict(_COMPACT))
                    response = await admin.create_topics([topic])
                    for _name, code, *rest in response.topic_errors:
                        if not is_success(code, exists_ok=True):
                            raise refused(ConnectError, where, code, rest[0] if rest else None)
                # A topic just created may take a moment to appear in the metadata.
                with anyio.move_on_after(config.request_timeout_ms / 1000):
                    while True:
                        found = await admin.describe_topics([self.topic])
                        partitions = sorted(
                            p["partition"]
                            for t in found
                            if t["topic"] == self.topic and not t["error_code"]
                            for p in t["partitions"]
                        )
                        if partitions:
                            await self._check_compacted(admin)
                            return [TopicPartition(self.topic, p) for p in partitions]
                        await anyio.sleep(0.1)
            raise ConnectError(
                f"{where}: the topic does not exist; create it with cleanup.policy=compact, "
                "or set create_topics: true"
            )
        finally:
            with anyio.CancelScope(shield=True), tolerated(f"{where}: closing the admin client"):
                await admin.close()

    async def _check_compacted(self, admin: Any) -> None:
        """Warn when the topic is not compacted (made by someone else, or by the broker's
        auto.create.topics.enable): retention would then delete old keys with their data."""
        policy = None
        with tolerated(f"reading the cleanup.policy of {self._where}"):
            resource = ConfigResource(
                ConfigResourceType.TOPIC, self.topic, {"cleanup.policy": None}
            )
            answers = await admin.describe_configs([resource])
            for answer in answers:
                for _code, _message, _type, name, entries in answer.resources:
                    if name == self.topic:
                        policy = next((e[1] for e in entries if e[0] == "cleanup.policy"), None)
        if policy is not None and "compact" not in policy:
            log.warning(
                "%s has cleanup.policy=%s: Kafka deletes its records after retention.ms, "
                "and the state they hold (stored subscriptions) with them; set "
                "cleanup.policy=compact on it (kafka-configs.sh --alter --add-config "
                "cleanup.policy=compact)",
                self._where,
                policy,
            )

    async def _writer(self) -> Any:
        await self._ensure_topic()
        if self._producer is not None:
            return self._producer
        async with self._lock:
            self._check()
            if self._producer is None:
                where = f"opening a producer for {self._where}"
                with translated(PublishError, where, setup=True):
                    producer = AIOKafkaProducer(
                        acks="all", enable_idempotence=True, **self._connector.client_options()
                    )
                try:
                    with translated(PublishError, where):
                        await producer.start()
                except BaseException:
                    with anyio.CancelScope(shield=True), tolerated(where):
                        await producer.stop()
                    raise
                self._producer = producer
        return self._producer

    async def _reader(self) -> tuple[Any, list[TopicPartition]]:
        """A started consumer (no group) assigned every partition of the topic."""
        assigned = await self._ensure_topic()
        self._check()
        where = f"reading {self._where}"
        with translated(ConnectError, where, setup=True):
            consumer = AIOKafkaConsumer(
                group_id=None, enable_auto_commit=False, **self._connector.client_options()
            )
        self._readers.add(consumer)
        try:
            with translated(ConnectError, where):
                await consumer.start()
                consumer.assign(assigned)
        except BaseException:
            await self._release(consumer)
            raise
        return consumer, assigned

    async def _release(self, consumer: Any) -> None:
        self._readers.discard(consumer)
        with anyio.CancelScope(shield=True), tolerated(f"closing a reader of {self._where}"):
            await consumer.stop()

    async def close(self) -> None:
        """Stop the producer and every reader (a watch then ends). Idempotent."""
        self._closed = True
        producer, self._producer = self._producer, None
        for consumer in list(self._readers):
            await self._release(consumer)
        if producer is not None:
            with (
                anyio.CancelScope(shield=True),
                tolerated(f"closing the producer of {self._where}"),
            ):
                await producer.stop()

    # -- the StateStore contract -----------------------------------------------------------

    async def load(self) -> dict[str, bytes]:
        consumer, assigned = await self._reader()
        timeout = self._connector.config.request_timeout_ms / 1000 * 3
        values: dict[str, bytes] = {}
        where = f"loading {self._where}"
        try:
            with translated(ConnectError, where):
                await consumer.seek_to_beginning(*assigned)
                ends: dict[TopicPartition, int] = await consumer.end_offsets(assigned)
                nexts = {tp: int(await consumer.position(tp)) for tp in assigned}
                with anyio.fail_after(timeout):
                    while [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
                        for record in await self._records(consumer, nexts):
                            _apply(values, record, ends)
        except TimeoutError as exc:
            self._check()
            raise ConnectError(
                f"{where}: did not reach the end offsets within {timeout:g} s; check "
                "that the brokers are reachable"
            ) from exc
        finally:
            await self._release(consumer)
        self._loaded = {tp.partition: ends[tp] for tp in assigned}
        return values

    async def put(self, key: str, value: bytes) -> None:
        await self._send(key, value)

    async def delete(self, key: str) -> None:
        await self._send(key, None)

    async def _send(self, key: str, value: bytes | None) -> None:
        producer = await self._writer()
        what = "writing" if value is not None else "deleting"
        with translated(PublishError, f"{what} key {key!r} of {self._where}"):
            await producer.send_and_wait(self.topic, key=key.encode(), value=value)

    async def watch(self) -> AsyncIterator[tuple[str, bytes | None]]:
        consumer, assigned = await self._reader()
        where = f"watching {self._where}"
        try:
            with translated(ConnectError, where):
                starts = self._loaded
                if starts is None:  # every key's history, ending with its current value
                    await consumer.seek_to_beginning(*assigned)
                else:
                    for tp in assigned:
                        consumer.seek(tp, starts.get(tp.partition, 0))
                nexts = {tp: int(await consumer.position(tp)) for tp in assigned}
            while True:
                try:
                    with translated(ConnectError, where):
                        records = await self._records(consumer, nexts)
                except ConnectError:
                    if self._closed:
                        return
                    raise
                if self._closed:
                    return
                for record in records:
                    if record.key is not None:
                        yield record.key.decode("utf-8", "replace"), record.value
        finally:
            await self._release(consumer)

    async def _records(self, consumer: Any, nexts: dict[TopicPartition, int]) -> list[Any]:
        """The next records of every partition in ``nexts`` (which it keeps at the offset
        after the last record read); a record the client cannot decode is skipped with a
        warning (see read_past_unreadable), so one bad record cannot lose the state."""
        bad: dict[Any, tuple[int, Exception]] = {}
        try:
            batch = await consumer.getmany(*nexts, timeout_ms=_POLL_MS)
        except CLIENT_ERRORS:
            raise
        except Exception:  # a record aiokafka cannot decode
            batch, bad = await read_past_unreadable(
                consumer, nexts, timeout_ms=_POLL_MS, max_records=_SALVAGE
            )
        out: list[Any] = []
        for tp, records in batch.items():
            if records:
                out.extend(records)
                nexts[tp] = records[-1].offset + 1
        for tp, (offset, exc) in bad.items():
            log.warning(
                "%s: skipping the record at offset %d of partition %d, which cannot be "
                "decoded (%s); the key it set, if any, keeps its earlier value",
                self._where,
                offset,
                tp.partition,
                describe(exc),
            )
            nexts[tp] = offset + 1
        return out


def _apply(values: dict[str, bytes], record: Any, ends: dict[TopicPartition, int]) -> None:
    """One record read while loading: a value replaces the key's, a tombstone removes it
    (records past the end offsets the load began with wait for the watch)."""
    if record.key is None or record.offset >= ends[TopicPartition(record.topic, record.partition)]:
        return
    key = record.key.decode("utf-8", "replace")
    if record.value is None:
        values.pop(key, None)
    else:
        values[key] = record.value
