"""One member of a Kafka consumer group, with per-event acks over Kafka's offsets.

Kafka remembers one committed offset per partition and group; eventmesh acks event by
event, in any order. This module bridges the two:

* Each partition the member holds keeps the offsets it handed out and has not yet seen
  acked, in order. The offset to commit is the first of them (or, when all are acked,
  the one after the last handed out), so a commit never passes an unacked event and a
  crash redelivers rather than skips (at-least-once).
* Commits go out every ``commit_interval_ms`` or 5,000 acks (from ``fetch`` and ``ack``),
  when the group takes a partition away, and on close. Auto-commit is off.
* ``nack(delay)`` keeps the event in this process and hands it out again once the delay
  has passed, with ``attempt`` one higher; its offset holds the commit back meanwhile.
  While ``max_poll_records`` of them wait, no new record is read (docs/kafka.md).
* When a partition is assigned, the member first pauses it, then settles its position:
  the group's committed offset, or, for a group that has none, the start position
  (earliest, latest, or the first record at a time), which it commits at once. So
  ``latest`` means "from when start() returned", for this member and whichever member
  owns the partition next. ``start()`` returns only once this is done. A partition
  first assigned after that (one added to the topic later) starts, for ``latest``, at
  the first record stored at or after the moment ``start()`` returned (its end if none).
* When a partition is revoked, the member stops handing it out, commits what was acked,
  and forgets the rest: the next owner reads it again from the commit.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import anyio
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from eventmesh.bindings.kafka import from_message
from eventmesh.connectors.base import Consumer, Delivery, StartPosition
from eventmesh.errors import SubscribeError
from eventmesh.event import Event
from eventmesh_kafka._errors import (
    read_past_unreadable,
    record_time,
    tolerated,
    translated,
    unreadable,
    unreadable_event,
    wrap_record,
)

if TYPE_CHECKING:
    from eventmesh_kafka.connector import KafkaConnector

__all__ = ["KafkaConsumer"]

log = logging.getLogger(__name__)

_COMMIT_EVERY: Final = 5_000
"""Acks after which a commit is due even before ``commit_interval_ms`` passed."""
_IDLE_POLL: Final = 1.0
"""The longest single wait inside ``fetch`` (it loops), so commits and retries happen."""
_RETRY: Final = 1.0
"""Seconds between attempts to settle partitions whose start position could not be read."""


class _Partition:
    """What this member knows of one partition it holds, for one assignment."""

    __slots__ = ("acked", "committed", "live", "next", "pending", "tp")

    def __init__(self, tp: Any, position: int) -> None:
        self.tp = tp
        self.pending: deque[int] = deque()  # handed out, not yet acked, ascending
        self.acked: set[int] = set()  # acked, but an earlier pending offset is not
        self.next = position  # the offset after the last one handed out
        self.committed = position  # what the group has committed
        self.live = True  # False once revoked or closed: acks are then ignored

    @property
    def commit_to(self) -> int:
        """The offset to commit: every offset below it was acked (or never existed)."""
        return self.pending[0] if self.pending else self.next

    def handed_out(self, offset: int) -> None:
        self.pending.append(offset)
        self.next = offset + 1

    def ack(self, offset: int) -> None:
        pending = self.pending
        if pending and pending[0] == offset:
            pending.popleft()
            acked = self.acked
            while pending and pending[0] in acked:
                acked.remove(pending.popleft())
        else:
            self.acked.add(offset)


class _KafkaDelivery(Delivery):
    __slots__ = ("_consumer", "_part", "_settled")

    def __init__(
        self,
        consumer: KafkaConsumer,
        part: _Partition,
        event: Event,
        topic: str,
        partition: int,
        offset: int,
        key: str | None,
        attempt: int,
        timestamp: float | None,
    ) -> None:
        # Delivery.__init__'s assignments, written out: one of these is made per record.
        self.event = event
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.attempt = attempt
        self.timestamp = timestamp
        self._consumer = consumer
        self._part = part
        self._settled = False

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        part = self._part
        if part.live:
            part.ack(self.offset)
            consumer = self._consumer
            consumer._acks += 1
            if consumer._commit_due(time.monotonic()):
                await consumer._commit()

    async def nack(self, delay: float = 0.0) -> None:
        if self._settled:
            return
        self._settled = True
        if self._part.live:
            self._consumer._redeliver(self, max(0.0, delay))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Passes the group's rebalance callbacks to the consumer."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self._consumer._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        await self._consumer._assigned(assigned)


class KafkaConsumer(Consumer):
    """A member of consumer group ``group`` on ``topic``; see the module docstring."""

    def __init__(
        self, connector: KafkaConnector, topic: str, group: str, start: StartPosition
    ) -> None:
        self.topic = topic
        self.group = group
        self._connector = connector
        self._config = connector.config
        self._start_at = start
        self._where = f"consumer group {group!r} on Kafka topic {topic!r}"
        self._client: Any = None
        self._ready = anyio.Event()
        self._parts: dict[int, _Partition] = {}
        self._unsettled: set[Any] = set()  # assigned partitions whose position is unknown
        self._redeliveries: list[tuple[float, int, _KafkaDelivery]] = []
        self._seq = itertools.count()
        self._wake: anyio.CancelScope | None = None
        self._interval = self._config.commit_interval_ms / 1000
        self._acks = 0  # since the last commit
        self._last_commit = time.monotonic()
        self._committing = False
        self._generation = 0  # counts rebalance callbacks, so a stale _settle gives up
        self._started_ms: int | None = None  # when start() returned, in epoch ms
        self._max_held = self._config.max_poll_records
        self._full = False  # True while nacked events fill the bound: partitions paused
        self._salvages = 0  # reads past an unreadable record, to take partitions in turn

    def lag(self) -> int | None:
        """Records after the group's commit point in the partitions this member holds,
        from the high watermark of the last fetch; None before a fetch has told it."""
        client = self._client
        if client is None or not self._parts:
            return None
        total = 0
        for part in list(self._parts.values()):
            highwater = client.highwater(part.tp)
            if highwater is None:
                return None
            total += max(0, highwater - part.commit_to)
        return total

    # -- lifecycle -----------------------------------------------------------------------

    async def _start(self) -> None:
        """Join the group; return once this member holds its partitions and knows where
        each starts. Raises ``SubscribeError`` when Kafka refuses or does not answer."""
        connector = self._connector
        try:
            await connector.ensure_topic(self.topic, SubscribeError)
            config = self._config
            with translated(SubscribeError, f"joining {self._where}", setup=True):
                self._client = AIOKafkaConsumer(
                    group_id=self.group,
                    enable_auto_commit=False,
                    # Only for a committed offset that retention has since deleted: a new
                    # group's start is settled explicitly in _settle.
                    auto_offset_reset="earliest",
                    max_poll_records=config.max_poll_records,
                    session_timeout_ms=config.session_timeout_ms,
                    heartbeat_interval_ms=config.heartbeat_interval_ms,
                    max_poll_interval_ms=config.max_poll_interval_ms,
                    **connector.client_options(),
                )
            connector.register(self)
            limit = (config.session_timeout_ms + config.request_timeout_ms) / 1000
            with anyio.move_on_after(limit) as scope:
                with translated(SubscribeError, f"joining {self._where}"):
                    self._client.subscribe([self.topic], listener=_Listener(self))
                    await self._client.start()
                await self._ready.wait()
                self._started_ms = int(time.time() * 1000)
            if scope.cancelled_caught:
                raise SubscribeError(
                    f"joining {self._where}: no partition assignment within {limit:.0f}s; "
                    "is the broker's group coordinator available?"
                )
        except BaseException:
            await self.close()
            raise

    async def _close(self) -> None:
        """Commit what was acked, then leave the group."""
        if self._wake is not None:
            self._wake.cancel()
        client, self._client = self._client, None
        self._connector.unregister(self)
        if client is None:
            return
        with anyio.CancelScope(shield=True):
            await self._commit(client, force=True)
            for part in self._parts.values():
                part.live = False
            self._parts.clear()
            self._redeliveries.clear()
            with tolerated(f"leaving {self._where}"):
                await client.stop()

    # -- fetching ------------------------------------------------------------------------

    async def fetch(self, max_events: int = 256, timeout: float | None = None) -> list[Delivery]:
        self._check_fetch()
        max_events = max(1, max_events)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            client = self._client
            if client is None:  # closed meanwhile
                return []
            if self._unsettled:
                await self._settle(client, list(self._unsettled))
            out = self._due(max_events)
            if out:
                return out
            if (len(self._redeliveries) >= max(self._max_held, max_events)) is not self._full:
                self._hold(client)
            now = time.monotonic()
            if self._commit_due(now):
                await self._commit(client)
            wait = self._wait(now, deadline)
            records: dict[Any, list[Any]] = {}
            poisoned = False
            # The scope's deadline also bounds the wait aiokafka makes, whatever its
            # timeout_ms, while its group rebalances.
            with anyio.CancelScope(deadline=anyio.current_time() + wait + 0.05) as scope:
                self._wake = scope
                try:
                    with translated(SubscribeError, f"fetching for {self._where}"):
                        records = await client.getmany(
                            timeout_ms=int(wait * 1000), max_records=max_events
                        )
                except SubscribeError:
                    if self.closed:  # aiokafka refuses a stopped consumer's poll
                        return []
                    raise
                except Exception as exc:  # a record aiokafka cannot decode
                    log.debug("%s: reading past a record: %r", self._where, exc)
                    poisoned = True
                finally:
                    self._wake = None
            if self.closed:
                return []
            if poisoned:
                out = await self._salvage(client, max_events)
                if out:
                    return out
            elif records:
                out = self._deliveries(records)
                if out:
                    return out
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def _hold(self, client: Any) -> None:
        """Pause every held partition while nacked events waiting for their delay reach
        the bound (``max_poll_records``, or the fetch's ``max_events`` if larger), and
        resume them once fewer wait: memory stays bounded however many are nacked.
        ``getmany`` is still called meanwhile, so the member stays in its group."""
        self._full = not self._full
        tps = [p.tp for p in self._parts.values()]
        if not tps:
            return
        with tolerated(f"pausing or resuming {self._where}"):
            if self._full:
                client.pause(*tps)
            else:
                client.resume(*tps)

    def _wait(self, now: float, deadline: float | None) -> float:
        """How long the next poll may wait: until the deadline, the next redelivery, the
        next commit or the next retry, whichever comes first."""
        wait = _IDLE_POLL
        if deadline is not None:
            wait = min(wait, deadline - now)
        if self._redeliveries:
            wait = min(wait, self._redeliveries[0][0] - now)
        if self._acks and not self._committing:
            wait = min(wait, self._last_commit + self._interval - now)
        if self._unsettled:
            wait = min(wait, _RETRY)
        return max(0.0, wait)

    def _due(self, max_events: int) -> list[Delivery]:
        """Nacked events whose delay has passed, as new deliveries."""
        heap = self._redeliveries
        out: list[Delivery] = []
        if not heap:
            return out
        now = time.monotonic()
        while heap and heap[0][0] <= now and len(out) < max_events:
            _, _, old = heapq.heappop(heap)
            part = old._part
            if not part.live:
                continue  # the partition moved on: its next owner reads it from the commit
            out.append(
                _KafkaDelivery(
                    self,
                    part,
                    old.event,
                    self.topic,
                    old.partition,
                    old.offset,
                    old.key,
                    old.attempt + 1,
                    old.timestamp,
                )
            )
        return out

    def _deliveries(self, records: dict[Any, list[Any]]) -> list[Delivery]:
        out: list[Delivery] = []
        append = out.append
        topic = self.topic
        for tp, batch in records.items():
            part = self._parts.get(tp.partition)
            if part is None:
                # Not settled (paused, so aiokafka returns nothing of it) or no longer
                # held: nothing of this partition is committed by this member, so the
                # records are read again by whoever holds it next.
                continue
            partition = tp.partition
            for record in batch:
                offset = record.offset
                stamp = record_time(record.timestamp)
                try:
                    event = from_message(
                        record.key,
                        record.value,
                        record.headers,
                        topic=topic,
                        partition=partition,
                        offset=offset,
                        timestamp=stamp,
                    )
                except Exception as exc:  # no record is dropped: it is delivered wrapped
                    event = wrap_record(record, stamp, exc)
                part.handed_out(offset)
                key = event.partitionkey
                append(_KafkaDelivery(self, part, event, topic, partition, offset, key, 1, stamp))
        return out

    async def _salvage(self, client: Any, max_events: int) -> list[Delivery]:
        """After ``getmany`` raised on a record it cannot decode: deliver the records
        before it (that call lost them) and the record itself, wrapped, so it is handled
        (dead-lettered) and committed like any other; see read_past_unreadable."""
        parts = [p for p in self._parts.values() if p.live]
        if not parts:
            return []
        # Each time from the next partition, so that a backlog in the ones read first
        # cannot keep the one with the unreadable record waiting.
        self._salvages += 1
        turn = self._salvages % len(parts)
        parts = parts[turn:] + parts[:turn]
        generation = self._generation

        def current() -> bool:  # no rebalance or close since: the offsets still hold
            return self._generation == generation and not self.closed

        with translated(SubscribeError, f"fetching for {self._where}"):
            records, bad = await read_past_unreadable(
                client,
                {p.tp: p.next for p in parts},
                timeout_ms=int(_IDLE_POLL * 1000),
                max_records=max_events,
                current=current,
            )
        if not current():
            return []  # read under another assignment: the new one reads from its commit
        out = self._deliveries(records)
        topic = self.topic
        for tp, (offset, exc) in bad.items():
            part = self._parts.get(tp.partition)
            if part is None or not part.live:
                continue
            event = unreadable_event(topic, tp.partition, offset, unreadable(exc))
            part.handed_out(offset)
            out.append(
                _KafkaDelivery(self, part, event, topic, tp.partition, offset, None, 1, None)
            )
        return out

    # -- acks, nacks and commits ---------------------------------------------------------

    def _redeliver(self, delivery: _KafkaDelivery, delay: float) -> None:
        heapq.heappush(self._redeliveries, (time.monotonic() + delay, next(self._seq), delivery))
        if self._wake is not None:
            self._wake.cancel()  # a waiting fetch recomputes its wait

    def _commit_due(self, now: float) -> bool:
        return (
            bool(self._acks)
            and not self._committing
            and (self._acks >= _COMMIT_EVERY or now - self._last_commit >= self._interval)
        )

    async def _commit(self, client: Any = None, *, force: bool = False) -> None:
        """Commit every held partition's acked prefix; failures are logged (the offsets
        are committed later, or read again by the next owner)."""
        client = client or self._client
        if client is None or (self._committing and not force):
            return
        self._acks = 0
        self._last_commit = time.monotonic()
        todo = [(p, p.commit_to) for p in self._parts.values() if p.commit_to > p.committed]
        if not todo:
            return
        self._committing = True
        done = False
        try:
            with (
                anyio.move_on_after(self._config.request_timeout_ms / 1000),
                tolerated(f"committing offsets of {self._where}"),
            ):
                await client.commit({p.tp: offset for p, offset in todo})
                for part, offset in todo:
                    part.committed = max(part.committed, offset)
                done = True
        finally:
            self._committing = False
            if not done:
                self._acks = max(self._acks, 1)  # try again after the interval

    # -- the group's rebalance callbacks -------------------------------------------------

    async def _revoked(self, revoked: set[Any]) -> None:
        self._generation += 1
        parts = [self._parts.pop(tp.partition) for tp in revoked if tp.partition in self._parts]
        self._unsettled.difference_update(revoked)
        if not parts:
            return
        for part in parts:
            part.live = False
        # Their nacked events are the next owner's now: they no longer count as held.
        self._redeliveries = [item for item in self._redeliveries if item[2]._part.live]
        heapq.heapify(self._redeliveries)
        todo = {p.tp: p.commit_to for p in parts if p.commit_to > p.committed}
        client = self._client
        if todo and client is not None:
            with (
                anyio.move_on_after(self._config.request_timeout_ms / 1000),
                tolerated(f"committing offsets of {self._where} before a rebalance"),
            ):
                await client.commit(todo)

    async def _assigned(self, assigned: set[Any]) -> None:
        self._generation += 1
        try:
            tps = [tp for tp in assigned if tp.topic == self.topic]
            client = self._client
            if tps and client is not None:
                # Before anything else: no record of these is handed out until each one's
                # position is settled (and, for a new group, committed).
                with tolerated(f"pausing new partitions of {self._where}"):
                    client.pause(*tps)
                await self._settle(client, tps)
        finally:
            self._ready.set()

    async def _settle(self, client: Any, tps: list[Any]) -> None:
        """Find where each partition starts, commit new groups' starts, then resume them.

        On failure the partitions stay paused and ``fetch`` tries again. If the group
        rebalances meanwhile, the new assignment's own call settles them instead.
        """
        generation = self._generation
        held = client.assignment()
        tps = [tp for tp in tps if tp in held]
        self._unsettled.difference_update(tps)
        if not tps:
            return
        try:
            with translated(SubscribeError, f"finding the start of {self._where}"):
                positions = await self._positions(client, tps)
        except SubscribeError as exc:
            if generation == self._generation:
                log.warning("%s; retrying in %.0fs", exc, _RETRY)
                self._unsettled.update(tps)
            return
        if generation != self._generation:
            return
        held = client.assignment()
        ready = [tp for tp in tps if tp in held]
        for tp in ready:
            old = self._parts.get(tp.partition)
            if old is not None:
                old.live = False
            self._parts[tp.partition] = _Partition(tp, positions[tp])
        if not self._full:  # else resumed with the others once redeliveries went out
            client.resume(*ready)

    async def _positions(self, client: Any, tps: list[Any]) -> dict[Any, int]:
        committed = {tp: await client.committed(tp) for tp in tps}
        fresh = [tp for tp in tps if committed[tp] is None]
        if fresh:
            starts = await self._start_offsets(client, fresh)
            for tp, offset in starts.items():
                client.seek(tp, offset)
            # Pin the start: whichever member holds the partition next resumes here.
            await client.commit(starts)
        return {tp: int(await client.position(tp)) for tp in tps}

    async def _start_offsets(self, client: Any, fresh: list[Any]) -> dict[Any, int]:
        start = self._start_at
        if start == "earliest":
            return dict(await client.beginning_offsets(fresh))
        if start == "latest" or not isinstance(start, datetime):
            if self._started_ms is None:  # joining: "latest" is now
                return dict(await client.end_offsets(fresh))
            # A partition first held after start() returned (one added to the topic
            # since): "latest" is still when start() returned, not now.
            stamp = self._started_ms
        else:
            stamp = max(0, int(start.timestamp() * 1000))
        found = await client.offsets_for_times(dict.fromkeys(fresh, stamp))
        missing = [tp for tp in fresh if found.get(tp) is None]
        ends = dict(await client.end_offsets(missing)) if missing else {}
        return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in fresh}
