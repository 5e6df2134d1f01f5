"""The Kafka connector: publish with ``acks=all``, subscribe as Kafka consumer groups.

One idempotent producer (``acks=all``, ``enable_idempotence``) per connector publishes
every event of a call at once and returns when the broker acknowledged all of them, so a
returned ``publish`` means written to every in-sync replica. Each :meth:`subscribe` is
one member of a Kafka consumer group (see :mod:`eventmesh_kafka.consumer`). With
``create_topics`` an admin client creates a topic with ``partitions`` partitions the
first time it is used; the topics known to exist are remembered for the connector's life.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Final

import anyio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.helpers import create_ssl_context
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from eventmesh.bindings.kafka import Message, to_binary, to_structured
from eventmesh.connectors.base import (
    Capabilities,
    Connector,
    Consumer,
    StartPosition,
    StateStore,
    StoredEvent,
)
from eventmesh.errors import (
    ClosedError,
    ConnectError,
    ConnectorError,
    PublishError,
    RejectedError,
    SubscribeError,
)
from eventmesh.event import Event
from eventmesh_kafka._errors import (
    is_success,
    refused,
    tolerated,
    translate,
    translated,
)
from eventmesh_kafka.browse import read_topic
from eventmesh_kafka.config import KafkaConfig
from eventmesh_kafka.consumer import KafkaConsumer
from eventmesh_kafka.state import KafkaStateStore

__all__ = ["KafkaConnector"]

log = logging.getLogger(__name__)

_CAPABILITIES: Final = Capabilities(
    durable=True, ordered_by_key=True, replay=True, consumer_groups=True, redelivery=True
)
_TOPIC: Final = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")
_HEALTH_TIMEOUT: Final = 5.0
_HEADROOM: Final = 4096
"""Bytes the framing of a record may add to its key, value and headers: a record whose
parts are this close to ``max_request_size`` has its exact size computed."""


def _check_name(topic: object) -> str:
    """``topic`` if Kafka accepts it as a topic name, else ``RejectedError`` saying why
    not (Kafka's rule: 1 to 249 of ``[a-zA-Z0-9._-]``, not ``.`` or ``..``)."""
    if not isinstance(topic, str) or not _TOPIC.match(topic) or topic in (".", ".."):
        shown = (
            repr(topic)
            if not isinstance(topic, str) or len(topic) <= 60
            else (f"{topic[:40]!r}... ({len(topic)} characters)")
        )
        raise RejectedError(
            f"{shown} is not a valid Kafka topic name: use 1 to 249 ASCII letters, digits, "
            "'.', '_' and '-' (and not '.' or '..' alone); Kafka never stores it, so do "
            "not retry"
        )
    return topic


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a send's outcome as seen, so asyncio does not warn about an unread error."""
    if not future.cancelled():
        future.exception()


class KafkaConnector(Connector):
    """Apache Kafka as an eventmesh backend (``type: kafka``), built on aiokafka."""

    Config = KafkaConfig
    config: KafkaConfig

    def __init__(self, config: KafkaConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name or "kafka")
        self._producer: Any = None
        self._admin: Any = None
        self._client_options: dict[str, Any] = {}
        self._encode = (
            to_structured
            if self.config.mode == "structured"
            else partial(to_binary, empty_data=self.config.empty_data)
        )
        self._topics: set[str] = set()
        self._topic_locks: dict[str, anyio.Lock] = {}
        self._replicas = 1
        self._consumers: set[KafkaConsumer] = set()
        self._producer_lock = anyio.Lock()
        self._broken: Any = None  # the producer whose sends failed, until it is replaced
        self._states: dict[str, KafkaStateStore] = {}

    @property
    def capabilities(self) -> Capabilities:
        return _CAPABILITIES

    def check_topic(self, topic: str) -> None:
        """``RejectedError`` for a name Kafka refuses (see :func:`_check_name`)."""
        _check_name(topic)

    # -- lifecycle -----------------------------------------------------------------------

    async def _open(self) -> None:
        config = self.config
        where = f"connecting to Kafka at {config.bootstrap_servers}"
        with translated(ConnectError, where, setup=True):
            ssl_context = None
            if config.security_protocol in ("SSL", "SASL_SSL"):
                ssl_context = create_ssl_context(
                    cafile=config.ssl_cafile,
                    certfile=config.ssl_certfile,
                    keyfile=config.ssl_keyfile,
                )
            self._client_options = {
                "bootstrap_servers": config.servers,
                "client_id": config.client_id,
                "request_timeout_ms": config.request_timeout_ms,
                "security_protocol": config.security_protocol,
                "ssl_context": ssl_context,
                "sasl_mechanism": config.sasl_mechanism or "PLAIN",
                "sasl_plain_username": config.sasl_plain_username,
                "sasl_plain_password": config.sasl_plain_password,
            }
            producer = self._new_producer()
            admin = AIOKafkaAdminClient(**self._client_options)
        try:
            with translated(ConnectError, where):
                await producer.start()
                await admin.start()
                if config.create_topics and config.replication_factor is None:
                    cluster = await admin.describe_cluster()
                    self._replicas = max(1, min(3, len(cluster.get("brokers", ()))))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop_clients(producer, admin)
            raise
        self._producer = producer
        self._admin = admin

    def _new_producer(self) -> Any:
        config = self.config
        return AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=config.linger_ms,
            max_batch_size=config.max_batch_size,
            max_request_size=config.max_request_size,
            compression_type=config.compression_type,
            **self._client_options,
        )

    async def _renew_producer(self) -> None:
        """Replace a producer whose requests failed by a new one (a new producer id).

        After a request timed out, an idempotent aiokafka producer's sequence numbers no
        longer match the broker's and every later send fails with
        OutOfOrderSequenceNumber; a new producer starts a fresh sequence.
        """
        async with self._producer_lock:
            old = self._producer
            if old is None or self._broken is not old:
                return  # renewed meanwhile (or closed)
            where = f"publishing to Kafka at {self.config.bootstrap_servers} (new producer)"
            with translated(PublishError, where, setup=True):
                new = self._new_producer()
            try:
                with translated(PublishError, where):
                    await new.start()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._stop_clients(new, None)
                raise
            if self._producer is not old:  # closed meanwhile: the new one is not wanted
                with anyio.CancelScope(shield=True):
                    await self._stop_clients(new, None)
                raise self._closed_error()
            self._producer, self._broken = new, None
            log.info("connector %r: replaced its Kafka producer after failed sends", self.name)
        with anyio.CancelScope(shield=True):
            await self._stop_clients(old, None)

    async def _close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.close()
        for store in self._states.values():
            await store.close()
        self._states.clear()
        producer, admin = self._producer, self._admin
        self._producer = self._admin = self._broken = None
        with anyio.CancelScope(shield=True):
            await self._stop_clients(producer, admin)

    async def _stop_clients(self, producer: Any, admin: Any) -> None:
        # Stopping the producer first sends what it still holds (publish calls that were
        # cancelled while waiting for their acknowledgements).
        if producer is not None:
            with tolerated(f"connector {self.name!r}: stopping the Kafka producer"):
                await producer.stop()
        if admin is not None:
            with tolerated(f"connector {self.name!r}: closing the Kafka admin client"):
                await admin.close()

    async def health(self) -> bool:
        """True while a broker answers a metadata request within a few seconds."""
        if not self.is_open:
            return False
        try:
            with translated(ConnectError, "checking Kafka"), anyio.fail_after(_HEALTH_TIMEOUT):
                await self._admin.describe_cluster()
        except ConnectError as exc:
            log.info("connector %r is not healthy: %s", self.name, exc)
            return False
        return True

    # -- topics --------------------------------------------------------------------------

    async def ensure_topic(self, topic: str, kind: type[ConnectorError]) -> None:
        """With ``create_topics``, create ``topic`` unless it is known to exist."""
        if not self.config.create_topics or topic in self._topics:
            return
        lock = self._topic_locks.setdefault(topic, anyio.Lock())
        async with lock:
            if topic in self._topics:
                return
            config = self.config
            replicas = config.replication_factor or self._replicas
            where = (
                f"creating Kafka topic {topic!r} ({config.partitions} partitions, "
                f"replication factor {replicas})"
            )
            try:
                with translated(kind, where):
                    response = await self._live(self._admin).create_topics(
                        [NewTopic(topic, config.partitions, replicas)]
                    )
            except ConnectorError as exc:
                if not self.is_open:  # close() stopped the admin client meanwhile
                    raise self._closed_error() from exc
                raise
            for name, code, *rest in response.topic_errors:
                if not is_success(code, exists_ok=True):
                    raise refused(kind, where, code, rest[0] if rest else None)
                log.debug("connector %r: topic %r is there", self.name, name)
            self._topics.add(topic)
            self._topic_locks.pop(topic, None)

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, topic: str, events: Sequence[Event]) -> None:
        """Send every event, then wait until the broker acknowledged all of them.

        Events with one ``partitionkey`` share a record key, hence a partition, and keep
        their order. Raises ``PublishError`` naming the topic and the broker's reason when
        any event may not be stored (then others of the call may have been stored),
        ``EventValidationError`` when an event's data cannot be encoded.
        """
        self._check_open()
        _check_name(topic)
        if not events:
            return
        encode = self._encode
        messages: list[Message] = [encode(event) for event in events]
        self._check_sizes(topic, messages)
        await self.ensure_topic(topic, PublishError)
        if self._broken is not None:
            await self._renew_producer()
        producer = self._live(self._producer)
        where = f"publishing to Kafka topic {topic!r}"
        send = producer.send
        futures: list[asyncio.Future[Any]] = []
        try:
            with translated(PublishError, where):
                for key, value, headers in messages:
                    if value is None and key is None:
                        # aiokafka refuses a record with neither key nor value; an
                        # empty value reads back as "no data" just the same.
                        value = b""
                    futures.append(await send(topic, value=value, key=key, headers=headers))
                results = await asyncio.gather(*futures, return_exceptions=True)
        except BaseException as exc:
            for future in futures:
                future.add_done_callback(_retrieve)
            if isinstance(exc, PublishError) and not self.is_open:
                raise self._closed_error() from exc
            raise
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed and not self.is_open:
            raise self._closed_error() from failed[0]
        if failed:
            self._broken = producer
            count = f"{len(failed)} of {len(events)} events were not stored"
            raise translate(failed[0], PublishError, f"{where} ({count})") from failed[0]

    def _check_sizes(self, topic: str, messages: list[Message]) -> None:
        """``RejectedError`` before anything is sent when a record is larger than
        ``max_request_size``, as aiokafka would find only once earlier events of the call
        were sent. The key, the value and every header count (a large extension makes a
        large record too); the exact size, as aiokafka computes it, only for records near
        the bound. Header names are ASCII (``ce_`` and an extension name, or
        ``content-type``), so their length is their size."""
        limit = self.config.max_request_size
        near = limit - _HEADROOM
        for i, (key, value, headers) in enumerate(messages):
            size = (len(value) if value else 0) + (len(key) if key else 0)
            for name, raw in headers:
                size += len(name) + (len(raw) if raw else 0)
            if size <= near:
                continue
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
            if size > limit:
                raise RejectedError(
                    f"publishing to Kafka topic {topic!r}: event {i} of the call is {size} "
                    f"bytes as a Kafka record, more than max_request_size ({limit}) allows; "
                    "Kafka never stores it as sent: send smaller events, or raise "
                    "max_request_size and the topic's max.message.bytes together"
                )

    # -- subscribing ---------------------------------------------------------------------

    def subscribe(self, topic: str, group: str, *, start: StartPosition = "latest") -> Consumer:
        """A member of Kafka consumer group ``group`` on ``topic``; see KafkaConsumer."""
        self._check_open()
        _check_name(topic)
        if not isinstance(group, str) or not group:
            raise SubscribeError(f"group must be a non-empty string, got {group!r}")
        if start not in ("earliest", "latest") and not isinstance(start, datetime):
            raise SubscribeError(f"start must be 'earliest', 'latest' or a datetime, got {start!r}")
        return KafkaConsumer(self, topic, group, start)

    def state(self, bucket: str) -> StateStore:
        """The bucket as a compacted topic (see :mod:`eventmesh_kafka.state`)."""
        self._check_open()
        store = self._states.get(bucket)
        if store is None:
            store = self._states[bucket] = KafkaStateStore(self, bucket)
        return store

    async def read(
        self,
        topic: str,
        *,
        since: datetime | None = None,
        after: Mapping[int, int] | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Browse ``topic`` without a group, committing nothing (eventmesh_kafka.browse);
        a topic that does not exist reads empty."""
        self._check_open()
        _check_name(topic)
        options = self.client_options()
        admin = self._live(self._admin)
        return await read_topic(options, admin, topic, since=since, after=after, limit=limit)

    def _live(self, client: Any) -> Any:
        """``client`` (the producer or the admin client, read after an await), or
        ``ClosedError`` when ``close()`` took it away meanwhile."""
        if client is None:
            raise self._closed_error()
        return client

    def _closed_error(self) -> ClosedError:
        return ClosedError(
            f"connector {self.name!r} was closed while the call was in progress; events "
            "of a publish may or may not have been stored"
        )

    # -- for the consumers ---------------------------------------------------------------

    def client_options(self) -> dict[str, Any]:
        """The connection settings every aiokafka client of this connector shares."""
        self._check_open()
        return dict(self._client_options)

    def register(self, consumer: KafkaConsumer) -> None:
        """Track a started consumer, so closing the connector closes it."""
        self._consumers.add(consumer)

    def unregister(self, consumer: KafkaConsumer) -> None:
        """Forget a closed consumer."""
        self._consumers.discard(consumer)
