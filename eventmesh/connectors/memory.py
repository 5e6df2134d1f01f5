"""The in-memory connector: partitioned append-only logs with consumer groups.

It is the default backend and a real implementation of the connector contract, not a
test double: a topic is split into partitions by ``partitionkey``; each group keeps a
committed position per partition and hands partitions to its members the way a Kafka
group does; a nacked event comes back after its delay; a topic holds at most
``max_events`` events that some group has not yet committed, and publishing into a full
topic waits (or fails, as configured) rather than dropping anything.

What it does not promise: durability. Events live in this process and die with it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from bisect import bisect_left
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import anyio
import msgspec

from eventmesh._duration import Duration
from eventmesh.connectors.base import Capabilities, Connector, Consumer, Delivery, StartPosition
from eventmesh.errors import (
    PublishError,
    SubscribeError,
    TopicFullError,
)
from eventmesh.event import Event

__all__ = ["MemoryConfig", "MemoryConnector"]

log = logging.getLogger(__name__)

_CAPABILITIES = Capabilities(
    durable=False, ordered_by_key=True, replay=True, consumer_groups=True, redelivery=True
)


class MemoryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the memory connector (the same for every topic it holds)."""

    partitions: int = 8
    """Partitions per topic: how many members of one group can share a topic's work."""
    max_events: int = 100_000
    """Events a topic retains that some group has not committed yet."""
    when_full: Literal["wait", "fail"] = "wait"
    """At ``max_events``: make publishers wait for consumers (back-pressure), or fail."""
    full_timeout: Duration | None = None
    """With ``wait``: fail with TopicFullError after this many seconds (None: wait on)."""

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions must be at least 1")
        if self.max_events < 1:
            raise ValueError("max_events must be at least 1")


class _Partition:
    __slots__ = ("base", "events", "stamps")

    def __init__(self) -> None:
        self.base = 0  # the offset of events[0]
        self.events: list[Event] = []
        self.stamps: list[float] = []  # store time of each event, for start-at-time

    @property
    def end(self) -> int:
        return self.base + len(self.events)


class _Topic:
    def __init__(self, name: str, partitions: int) -> None:
        self.name = name
        self.partitions = [_Partition() for _ in range(partitions)]
        self.groups: dict[str, _Group] = {}
        self.space: anyio.Event | None = None  # set when a commit may have freed room
        self.headroom = 0  # events that surely fit; recomputed only when used up
        self.round_robin = itertools.cycle(range(partitions))

    def low(self, p: int, *, active_only: bool = False) -> int:
        """The lowest offset of partition p that some group still needs.

        Without groups every retained event is kept, for groups that may come and start
        at 'earliest'. With ``active_only`` only groups that have members count, and a
        topic no such group reads needs nothing.
        """
        part = self.partitions[p]
        groups = [g for g in self.groups.values() if g.members or not active_only]
        if not groups:
            return part.end if active_only else part.base
        return max(part.base, min(g.committed[p] for g in groups))

    def retained(self, *, active_only: bool = False) -> int:
        """Events some group (some group with members, with ``active_only``) still needs."""
        total = 0
        for p, part in enumerate(self.partitions):
            total += part.end - self.low(p, active_only=active_only)
        return total

    def release(self) -> int:
        """Drop the events no group with members still needs; return how many.

        Groups without members move past them (and say so when they rejoin nothing is
        replayed): a reader that went away, or never came, must not stop producers for
        ever. It is logged as a warning with the count, never done silently.
        """
        released = 0
        for p, part in enumerate(self.partitions):
            target = self.low(p, active_only=True)
            for group in self.groups.values():
                if not group.members and group.committed[p] < target:
                    group.committed[p] = group.next[p] = target
                    group.acked[p].clear()
                    group.redeliver[p].clear()
            dead = target - part.base
            if dead > 0:
                released += dead
                del part.events[:dead]
                del part.stamps[:dead]
                part.base = target
        if released:
            idle = sorted(g.name for g in self.groups.values() if not g.members)
            log.warning(
                "topic %r is full: released %d events that no group with members still "
                "needed (groups without members: %s)",
                self.name,
                released,
                ", ".join(idle) or "none",
            )
        return released

    def compact(self) -> None:
        """Drop the events every group has committed, in chunks (amortised O(1) each)."""
        for p, part in enumerate(self.partitions):
            dead = self.low(p) - part.base
            if dead > 0 and dead * 2 >= len(part.events):
                del part.events[:dead]
                del part.stamps[:dead]
                part.base += dead

    def notify_space(self) -> None:
        space = self.space
        if space is not None:
            self.space = None
            space.set()


class _Group:
    def __init__(self, topic: _Topic, name: str, start: StartPosition) -> None:
        self.topic = topic
        self.name = name
        n = len(topic.partitions)
        self.committed = [self._start_offset(p, start) for p in range(n)]
        self.next = list(self.committed)  # the next offset to hand out
        self.acked: list[set[int]] = [set() for _ in range(n)]  # acked above committed
        self.redeliver: list[list[tuple[float, int, int]]] = [[] for _ in range(n)]
        self.attempts: dict[tuple[int, int], int] = {}
        self.members: list[_MemoryConsumer] = []
        self.owner: list[_MemoryConsumer | None] = [None] * n
        self._seq = itertools.count()

    def _start_offset(self, p: int, start: StartPosition) -> int:
        part = self.topic.partitions[p]
        if start == "latest":
            return part.end
        if start == "earliest":
            return part.base  # the oldest event still held, as Kafka's earliest
        if isinstance(start, datetime):
            stamp = start.timestamp()
            return part.base + bisect_left(part.stamps, stamp)
        raise SubscribeError(f"start must be 'earliest', 'latest' or a datetime, got {start!r}")

    def join(self, member: _MemoryConsumer) -> None:
        self.members.append(member)
        self._rebalance()

    def leave(self, member: _MemoryConsumer) -> None:
        member.partitions = []  # nothing more is handed to a member that left
        if member in self.members:
            self.members.remove(member)
            self._rebalance()
        self.topic.notify_space()  # a group without members no longer holds producers

    def _rebalance(self) -> None:
        """Give partitions round-robin to members; a moved partition restarts at its commit."""
        members = self.members
        for p in range(len(self.owner)):
            new = members[p % len(members)] if members else None
            if new is not self.owner[p]:
                self.owner[p] = new
                # Whatever the old owner had not acked is handed out again, and counts
                # as one more attempt of each of those events.
                acked = self.acked[p]
                nacked = {offset for _, _, offset in self.redeliver[p]}  # counted by nack
                for offset in range(self.committed[p], self.next[p]):
                    if offset not in acked and offset not in nacked:
                        self.attempts[(p, offset)] = self.attempts.get((p, offset), 0) + 1
                self.next[p] = self.committed[p]
                self.redeliver[p].clear()
        for member in members:
            member.partitions = [p for p, o in enumerate(self.owner) if o is member]
            member.wake()

    def take(self, member: _MemoryConsumer, max_events: int) -> list[Delivery]:
        out: list[Delivery] = []
        topic = self.topic
        now = time.monotonic()
        for p in member.partitions:
            heap = self.redeliver[p]
            while heap and heap[0][0] <= now and len(out) < max_events:
                _, _, offset = heapq.heappop(heap)
                if offset < self.committed[p] or offset in self.acked[p]:
                    continue
                part = topic.partitions[p]
                event = part.events[offset - part.base]
                out.append(
                    _MemoryDelivery(
                        self,
                        event,
                        topic=topic.name,
                        partition=p,
                        offset=offset,
                        key=event.partitionkey,
                        attempt=self.attempts.get((p, offset), 0) + 1,
                        timestamp=part.stamps[offset - part.base],
                    )
                )
        if len(out) >= max_events:
            return out
        parts = member.partitions
        if not parts:
            return out
        # Start at a rotating partition so one busy partition cannot starve the others.
        first = member.cursor % len(parts)
        member.cursor += 1
        for i in range(len(parts)):
            p = parts[(first + i) % len(parts)]
            part = topic.partitions[p]
            nxt = self.next[p]
            end = part.base + len(part.events)
            if nxt >= end:
                continue
            count = min(end - nxt, max_events - len(out))
            acked = self.acked[p]
            attempts = self.attempts
            events = part.events
            stamps = part.stamps
            base = part.base
            name = topic.name
            for offset in range(nxt, nxt + count):
                if acked and offset in acked:
                    continue
                event = events[offset - base]
                out.append(
                    _MemoryDelivery(
                        self,
                        event,
                        topic=name,
                        partition=p,
                        offset=offset,
                        key=event.partitionkey,
                        attempt=attempts.get((p, offset), 0) + 1 if attempts else 1,
                        timestamp=stamps[offset - base],
                    )
                )
            self.next[p] = nxt + count
            if len(out) >= max_events:
                break
        return out

    def next_due(self, member: _MemoryConsumer) -> float | None:
        due = [self.redeliver[p][0][0] for p in member.partitions if self.redeliver[p]]
        return min(due) if due else None

    def ack(self, p: int, offset: int) -> None:
        committed = self.committed[p]
        if offset < committed:
            return
        if self.attempts:
            self.attempts.pop((p, offset), None)
        acked = self.acked[p]
        if offset != committed:
            acked.add(offset)
            return
        committed += 1
        while acked and committed in acked:
            acked.remove(committed)
            committed += 1
        self.committed[p] = committed
        self.topic.notify_space()

    def nack(self, p: int, offset: int, attempt: int, delay: float) -> None:
        if offset < self.committed[p] or offset in self.acked[p]:
            return
        self.attempts[(p, offset)] = attempt
        heapq.heappush(self.redeliver[p], (time.monotonic() + delay, next(self._seq), offset))
        owner = self.owner[p]
        if owner is not None:
            owner.wake()


class _MemoryDelivery(Delivery):
    __slots__ = ("_group", "_settled")

    def __init__(self, group: _Group, event: Event, **kw: object) -> None:
        super().__init__(event, **kw)  # type: ignore[arg-type]
        self._group = group
        self._settled = False

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            self._group.ack(self.partition, self.offset)

    async def nack(self, delay: float = 0.0) -> None:
        if not self._settled:
            self._settled = True
            self._group.nack(self.partition, self.offset, self.attempt, max(0.0, delay))


class _MemoryConsumer(Consumer):
    def __init__(
        self, connector: MemoryConnector, topic: str, group: str, start: StartPosition
    ) -> None:
        self._connector = connector
        self.topic = topic
        self.group = group
        self._start_at = start
        self._group: _Group | None = None
        self._wakeup: anyio.Event | None = None
        self.partitions: list[int] = []
        self.cursor = 0

    def wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def _start(self) -> None:
        self._group = self._connector._join(self)

    async def fetch(self, max_events: int = 256, timeout: float | None = None) -> list[Delivery]:
        self._check_fetch()
        group = self._group
        assert group is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.closed:
                return []
            batch = group.take(self, max_events)
            if batch:
                return batch
            now = time.monotonic()
            wait = None
            if deadline is not None:
                wait = deadline - now
                if wait <= 0:
                    return []
            due = group.next_due(self)
            if due is not None:
                wait = max(due - now, 0.0) if wait is None else min(wait, max(due - now, 0.0))
            self._wakeup = wakeup = anyio.Event()
            if wait is None:
                await wakeup.wait()
            else:
                with anyio.move_on_after(wait):
                    await wakeup.wait()

    def lag(self) -> int | None:
        group = self._group
        if group is None:
            return None
        parts = group.topic.partitions  # only this member's: members' lags add up
        return sum(parts[p].end - group.committed[p] for p in self.partitions)

    async def _close(self) -> None:
        if self._group is not None:
            self._group.leave(self)
        self._connector._consumers.discard(self)
        self.wake()


class MemoryConnector(Connector):
    """The in-process connector (``type: memory``), the default."""

    Config = MemoryConfig
    config: MemoryConfig

    def __init__(self, config: MemoryConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name or "memory")
        self._topics: dict[str, _Topic] = {}
        self._consumers: set[_MemoryConsumer] = set()

    @property
    def capabilities(self) -> Capabilities:
        return _CAPABILITIES

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.close()
        for topic in self._topics.values():
            topic.notify_space()

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            if not name or not isinstance(name, str):
                raise PublishError(f"topic name must be a non-empty string, got {name!r}")
            topic = self._topics[name] = _Topic(name, self.config.partitions)
        return topic

    def _join(self, consumer: _MemoryConsumer) -> _Group:
        self._check_open()
        topic = self._topic(consumer.topic)
        group = topic.groups.get(consumer.group)
        if group is None:
            group = topic.groups[consumer.group] = _Group(topic, consumer.group, consumer._start_at)
        group.join(consumer)
        self._consumers.add(consumer)
        return group

    async def publish(self, topic: str, events: Sequence[Event]) -> None:
        self._check_open()
        t = self._topic(topic)
        count = len(events)
        if not count:
            return
        limit = self.config.max_events
        if count > limit:
            raise PublishError(
                f"a batch of {count} events is larger than topic {topic!r} can hold "
                f"(max_events={limit}); publish smaller batches or raise max_events"
            )
        if t.headroom < count:
            t.headroom = limit - t.retained()
            if t.headroom < count:
                await self._wait_for_space(t, count)
                t.headroom = limit - t.retained()
        t.headroom -= count
        stamp = time.time()
        partitions = t.partitions
        n = len(partitions)
        for event in events:
            key = event.extensions.get("partitionkey") if event.extensions else None
            part = partitions[hash(str(key)) % n if key is not None else next(t.round_robin)]
            part.events.append(event)
            part.stamps.append(stamp)
        for group in t.groups.values():
            for member in group.members:
                member.wake()

    async def _wait_for_space(self, t: _Topic, count: int) -> None:
        limit = self.config.max_events
        t.compact()
        if t.retained() + count <= limit:
            return
        if t.retained(active_only=True) + count <= limit:
            t.release()
            return
        if self.config.when_full == "fail":
            raise TopicFullError(
                f"topic {t.name!r} holds {t.retained()} events that its groups have not "
                f"consumed (max_events={limit}, when_full=fail); add consumers, raise "
                "max_events, or set when_full: wait"
            )
        with anyio.move_on_after(self.config.full_timeout) as scope:
            while t.retained(active_only=True) + count > limit:
                if t.space is None:
                    t.space = anyio.Event()
                await t.space.wait()
                self._check_open()
                t.compact()
        if scope.cancelled_caught:
            raise TopicFullError(
                f"topic {t.name!r} stayed full for {self.config.full_timeout}s "
                f"(max_events={limit}); its consumers are too slow or gone"
            )
        if t.retained() + count > limit:
            t.release()

    def subscribe(self, topic: str, group: str, *, start: StartPosition = "latest") -> Consumer:
        self._check_open()
        if not isinstance(topic, str) or not topic:
            raise SubscribeError(f"topic name must be a non-empty string, got {topic!r}")
        if not isinstance(group, str) or not group:
            raise SubscribeError(f"group must be a non-empty string, got {group!r}")
        return _MemoryConsumer(self, topic, group, start)
