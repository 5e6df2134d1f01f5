"""The connector contract: what every backend (memory, Kafka, NATS, ...) promises.

A :class:`Connector` stores events on topics and hands them to consumer groups. The
mesh builds everything else (filters, retries, dead letters, ordering lanes, metrics)
on top of this contract, once, for every backend.

The promises, which the conformance kit in :mod:`eventmesh.testing` checks:

* :meth:`Connector.publish` returns only once the backend's durability promise holds
  for every event of the call (memory: appended to the log; Kafka: written with
  ``acks=all``; JetStream: acknowledged by the stream), or raises ``PublishError``.
* :meth:`Connector.subscribe` joins a consumer group. Members of one group share the
  work; every group gets every event. Each :class:`Delivery` is acked or nacked; the
  connector commits a position only once every earlier delivery of that partition was
  acked, so a crash redelivers and never skips (at-least-once).
* :class:`Capabilities` says which further promises hold (durability, order per key,
  replay from a position). The kit tests each promise a connector claims.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal, NamedTuple, Self, TypeAlias

import msgspec

from eventmesh._lifecycle import ClosedOnExit
from eventmesh.errors import ClosedError, LifecycleError, RejectedError
from eventmesh.event import Event

__all__ = [
    "Capabilities",
    "Connector",
    "Consumer",
    "Delivery",
    "StartPosition",
    "StateStore",
    "StoredEvent",
]

StartPosition: TypeAlias = Literal["earliest", "latest"] | datetime
"""Where a *new* group starts reading: the oldest retained event, only events published
after it joined, or the first event stored at or after a time. The position is fixed
when the group first joins: a member that leaves without acking hands the next member
the same start, never a later 'latest'. A group that already has a committed position
resumes from it, whatever ``start`` says (as Kafka's ``auto.offset.reset`` does)."""


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a connector can promise beyond the base contract."""

    durable: bool = False
    """A stored event survives a restart of the process and of the backend."""
    ordered_by_key: bool = False
    """Events with the same ``partitionkey`` reach a group in the order they were stored."""
    replay: bool = False
    """A new group can start at the earliest retained event or at a point in time."""
    consumer_groups: bool = True
    """Members of one group share the work; different groups each get every event."""
    redelivery: bool = True
    """A nacked or abandoned delivery comes back (possibly to another member); for a
    backend that is not ``durable``, only while some process of the group holds it."""


class Delivery(abc.ABC):
    """One event handed to one consumer, to be acked or nacked exactly once.

    ``attempt`` counts deliveries of this event to this group, from 1, as far as the
    backend knows: one that keeps no count (Kafka) starts again at 1 after a crash or a
    rebalance. ``timestamp`` is
    when the backend stored it (seconds since the epoch), when the backend says.
    """

    __slots__ = ("attempt", "event", "key", "offset", "partition", "timestamp", "topic")

    def __init__(
        self,
        event: Event,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: str | None,
        attempt: int = 1,
        timestamp: float | None = None,
    ) -> None:
        self.event = event
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.attempt = attempt
        self.timestamp = timestamp

    @abc.abstractmethod
    async def ack(self) -> None:
        """Mark the event processed, so its position may be committed.

        Acking twice, or after a nack, does nothing. Raises nothing for an ack the
        backend can no longer take (the consumer closed, a rebalance moved the partition):
        the event will simply be delivered again, which at-least-once allows.
        """

    @abc.abstractmethod
    async def nack(self, delay: float = 0.0) -> None:
        """Give the event back: it is delivered again, after ``delay`` seconds at least.

        The position is not committed past it until a later delivery of it is acked.
        """

    async def touch(self) -> None:  # noqa: B027  # an optional hook: a no-op by default
        """Say the event is still in work: the backend restarts its
        :attr:`Consumer.redelivery_timeout` for it. Does nothing by default (a backend
        without such a timeout) and raises nothing, as :meth:`ack`."""

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.topic}[{self.partition}]@{self.offset} "
            f"attempt={self.attempt} id={self.event.id!r}>"
        )


class StoredEvent(NamedTuple):
    """One retained event as :meth:`Connector.read` returns it: where it is stored and
    when (seconds since the epoch, when the backend says)."""

    event: Event
    partition: int
    offset: int
    timestamp: float | None


class StateStore(abc.ABC):
    """A small durable key-value map that the mesh keeps its own state in (the
    subscriptions created through the API, dead-letter replay records), stored where the
    connector keeps its events: a table of the local store, a compacted Kafka topic, a
    NATS KV bucket. Values are opaque bytes; keys are short strings of
    ``[A-Za-z0-9_.=-]``.

    Every process that opens the same bucket on the same backend sees the same map:
    :meth:`watch` reports the changes others make. Raises ``ConnectorError`` subclasses
    only (``ConnectError`` when the backend cannot be reached, ``ClosedError`` after the
    connector closed).
    """

    @abc.abstractmethod
    async def load(self) -> dict[str, bytes]:
        """Every key and its current value."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``; returns once it is durable as the connector's
        events are."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key does nothing."""

    @abc.abstractmethod
    def watch(self) -> AsyncIterator[tuple[str, bytes | None]]:
        """Changes after the call, from this process and others, as ``(key, value)``,
        with ``None`` for a deletion, until the connector closes. A change may be
        reported more than once; the last report for a key is its current value."""


class Consumer(ClosedOnExit, abc.ABC):
    """One member of a consumer group on one topic, returned by :meth:`Connector.subscribe`.

    Use it as an async context manager: entering joins the group, leaving it leaves the
    group; deliveries not acked by then are delivered again to the group. The lifecycle
    (start once, close idempotently, refuse use after close) is kept here; a connector
    implements :meth:`_start`, :meth:`_close` and :meth:`fetch`.
    """

    topic: str
    group: str
    redelivery_timeout: float | None = None
    """Seconds after which the backend delivers an event again by itself when this member
    has neither acked, nacked nor touched it (JetStream's ``ack_wait``), or None when it
    never does while the member lives. A connector that sets it implements
    :meth:`Delivery.touch`."""
    _lifecycle: Literal["new", "started", "closed"] = "new"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def start(self) -> None:
        """Join the group. Raises ``SubscribeError`` when the backend refuses,
        ``LifecycleError`` when already started, ``ClosedError`` after close."""
        if self._lifecycle == "closed":
            raise ClosedError(f"{self._describe()} is closed")
        if self._lifecycle == "started":
            raise LifecycleError(f"{self._describe()} was started twice")
        self._lifecycle = "started"
        await self._start()

    async def close(self) -> None:
        """Leave the group, committing what was acked. Idempotent."""
        if self._lifecycle == "closed":
            return
        self._lifecycle = "closed"
        await self._close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._lifecycle == "closed"

    def _check_fetch(self) -> None:
        """Raise what :meth:`fetch` must raise before start or after close."""
        if self._lifecycle != "started":
            if self._lifecycle == "closed":
                raise ClosedError(f"{self._describe()} is closed")
            raise LifecycleError("start the consumer first: 'async with connector.subscribe(...)'")

    def _describe(self) -> str:
        return f"consumer of {self.topic!r} (group {self.group!r})"

    @abc.abstractmethod
    async def _start(self) -> None:
        """Join the group (called once, by :meth:`start`); raise ``SubscribeError``."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Leave the group and release everything (called once, by :meth:`close`, also
        for a consumer that was never started or whose start failed)."""

    @abc.abstractmethod
    async def fetch(self, max_events: int = 256, timeout: float | None = None) -> list[Delivery]:
        """Wait for deliveries and return up to ``max_events`` of them.

        Returns as soon as at least one is available; returns ``[]`` when ``timeout``
        seconds pass first, or when the consumer is closed while waiting. Raises
        ``ClosedError`` when called after close (see :meth:`_check_fetch`) and
        ``SubscribeError`` when the backend fails.
        """

    def lag(self) -> int | None:
        """Events stored on the topic that this consumer's group has not yet acked (its
        partitions' end minus the committed position), or None when the backend cannot
        tell cheaply. Read by the metrics at each scrape; must not block or raise."""
        return None

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        """Deliveries one at a time until the consumer is closed."""
        while True:
            try:
                batch = await self.fetch()
            except ClosedError:
                return
            if not batch and self.closed:
                return
            for delivery in batch:
                yield delivery


class Connector(ClosedOnExit, abc.ABC):
    """A backend that stores events on topics and delivers them to consumer groups.

    A connector is constructed from its own typed config (``Config``), then opened and
    closed as an async context manager. Its client library's exceptions never escape:
    they are translated into :mod:`eventmesh.errors` at one boundary.
    """

    Config: ClassVar[type[msgspec.Struct]]
    """The connector's typed configuration (a msgspec Struct); ``type`` is not part of it."""

    def __init__(self, config: Any = None, *, name: str | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self.name = name or type(self).__name__
        self._state: Literal["new", "open", "closed"] = "new"

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """What this connector, as configured, promises."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def open(self) -> None:
        """Connect to the backend. Raises ``ConnectError``; ``LifecycleError`` if open."""
        if self._state == "open":
            raise LifecycleError(f"connector {self.name!r} is already open")
        if self._state == "closed":
            raise ClosedError(f"connector {self.name!r} was closed; create a new one")
        await self._open()
        self._state = "open"

    async def close(self) -> None:
        """Close every consumer and the backend connection. Idempotent."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        await self._close()

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._state == "open"

    def _check_open(self) -> None:
        if self._state != "open":
            if self._state == "closed":
                raise ClosedError(f"connector {self.name!r} is closed")
            raise LifecycleError(
                f"connector {self.name!r} is not open; use it as 'async with connector:'"
            )

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect; raise ``ConnectError`` with the backend's reason."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release every resource; called once."""

    @abc.abstractmethod
    async def publish(self, topic: str, events: Sequence[Event]) -> None:
        """Store ``events`` on ``topic``; return only once all of them are stored.

        Raises ``PublishError`` (with the backend's reason) when any event may not be
        stored and trying again may help, ``RejectedError`` when it never can as sent (a
        topic name :meth:`check_topic` refuses, an event larger than the backend holds),
        ``ClosedError`` after close, and ``EventValidationError`` before sending
        anything when an event cannot be encoded for the backend (the caller's error).
        Events with the same ``partitionkey`` keep their order when the connector claims
        ``ordered_by_key``.
        """

    async def republish(self, topic: str, events: Sequence[Event], keys: Sequence[str]) -> None:
        """Store ``events`` on ``topic`` again on purpose (a dead-letter replay): each is an
        event the topic already held, and must be stored anew, not dropped as a
        producer's retry by a backend that de-duplicates by ``source`` and ``id``.

        ``keys`` names each event's replay (one per event, the same when the same replay
        is retried), for a backend that de-duplicates to key this publish by instead
        (NATS JetStream's ``Nats-Msg-Id``). Raises as :meth:`publish`. This default is
        :meth:`publish`: right for a backend that does not de-duplicate by content.
        """
        await self.publish(topic, events)

    @abc.abstractmethod
    def subscribe(self, topic: str, group: str, *, start: StartPosition = "latest") -> Consumer:
        """A consumer in ``group`` on ``topic``; use it as an async context manager."""

    def check_topic(self, topic: str) -> None:
        """Raise ``RejectedError`` naming the rule when the backend can never store events
        under the topic name ``topic`` (Kafka's character set, a NATS subject's tokens).

        Called by the mesh once per topic, before the first publish or subscribe, and the
        verdict cached by name; it must not block, do I/O or depend on the connection,
        and ``publish``/``subscribe`` should refuse the same names with the same error.
        The mesh bounds the name's length itself (``limits.max_name_length``). This
        default allows any non-empty string.
        """
        if not isinstance(topic, str) or not topic:
            raise RejectedError(f"a topic name must be a non-empty string, got {topic!r}")

    async def read(
        self,
        topic: str,
        *,
        since: datetime | None = None,
        after: Mapping[int, int] | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Browse retained events of ``topic`` without consuming them: no group joins,
        nothing is acked or committed.

        Returns up to ``limit`` events, in storage order within each partition: those
        stored at or after ``since`` when given, and in each partition named in ``after``
        only those with an offset above the one given (a cursor: pass the last offsets
        seen to read the next page). Raises ``RejectedError`` when the connector cannot
        browse (the default; a connector that claims ``replay`` should implement it).
        """
        raise RejectedError(
            f"connector {self.name!r} cannot browse stored events: "
            "use a connector that claims 'replay' (local, Kafka, NATS JetStream)"
        )

    async def delete_group(self, topic: str, group: str) -> bool:
        """Forget consumer ``group`` on ``topic``: its committed positions go, and a
        backend that keeps events for its groups frees what only this one still needed.
        The sidecar calls it when a subscription that owned its group is deleted.

        Returns False when there was no such group, or when the backend keeps groups
        itself (the default: Kafka and JetStream expire idle groups on their own).
        Raises ``SubscribeError`` while the group has members: close them first.
        """
        return False

    def released(self) -> dict[str, int]:
        """Events that retention removed before every group had read them, per topic
        that removed any, since open (``eventmesh_events_released_total``). Read at
        each metrics scrape: it must be cheap and must not block. Empty by default."""
        return {}

    def state(self, bucket: str) -> StateStore | None:
        """The durable key-value map named ``bucket`` on this backend, or None when the
        connector keeps no state (the mesh then keeps it in memory, lost on restart).
        Call after :meth:`open`."""
        return None

    async def health(self) -> bool:
        """True while the backend is reachable (used by the sidecar's readiness probe)."""
        return self.is_open
