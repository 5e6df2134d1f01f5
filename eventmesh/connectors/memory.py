"""The in-memory connector: partitioned append-only logs with consumer groups.

It is the default backend and a real implementation of the connector contract, not a
test double: a topic is split into partitions by ``partitionkey``; each group keeps a
committed position per partition and hands partitions to its members the way a Kafka
group does; a nacked event comes back after its delay.

Retention keeps its word. What every group has committed is freed as the groups move on
(in steps of ``_TRIM_STEP`` events per partition, so it costs nothing per event). An
event some group has not committed stays, whether the group has members or not, until
the group reads it, the group is deleted (:meth:`MemoryConnector.delete_group`, or
``inactive_threshold`` after its last member left), or a limit the configuration names
releases it: ``max_age``, or ``max_events`` under ``when_full: drop_oldest``. Whatever
a limit releases is counted per topic (:meth:`MemoryConnector.topic_stats`). At
``max_events`` the default is back-pressure: ``publish`` waits (``when_full: wait``) or
raises ``TopicFullError`` (``fail``). A topic no group has joined keeps its newest
events, up to its limits, for groups that start at 'earliest'.

What it does not promise: durability. Events live in this process and die with it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Literal, NamedTuple

import anyio
import msgspec

from eventmesh._duration import Duration
from eventmesh.connectors.base import (
    Capabilities,
    Connector,
    Consumer,
    Delivery,
    StartPosition,
    StoredEvent,
)
from eventmesh.connectors.browse import check_read, read_log
from eventmesh.errors import (
    RejectedError,
    SubscribeError,
    TopicFullError,
)
from eventmesh.event import Event

__all__ = ["MemoryConfig", "MemoryConnector", "TopicStats"]

log = logging.getLogger(__name__)

_CAPABILITIES = Capabilities(
    durable=False, ordered_by_key=True, replay=True, consumer_groups=True, redelivery=True
)

_TRIM_STEP = 256
"""A partition looks for committed events to free each time its slowest group has moved
this many events on: one ``min`` over the groups per step, never per event."""
_YIELD_EVERY = 128
"""Events a producer may store before its next publish gives the event loop a turn:
about one fetch of a consumer (the dispatcher takes 128 at a time), so a producer
publishing in a loop keeps its consumers going, in batches, as a broker's round trip
would."""
_NEVER = 1 << 62
"""An offset no partition reaches: the trim mark of every group but the slowest."""
_AGE_SLACK = 1 / 16
"""Expired events are released together, at most this fraction of ``max_age`` late, so
that checking the age costs one comparison per publish or fetch."""


class MemoryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the memory connector (the same for every topic it holds)."""

    partitions: int = 8
    """Partitions per topic: how many members of one group can share a topic's work."""
    max_events: int = 100_000
    """Events a topic retains: those some group has not committed yet (on a topic no
    group has joined, its newest events, kept for groups that start at 'earliest')."""
    max_age: Duration | None = None
    """Release events older than this, read or not, and count them (None: no age limit)."""
    when_full: Literal["wait", "fail", "drop_oldest"] = "wait"
    """At ``max_events``: make publishers wait for the groups (back-pressure), fail with
    TopicFullError, or release the oldest retained events and count them."""
    full_timeout: Duration | None = None
    """With ``wait``: fail with TopicFullError after this many seconds (None: wait on)."""
    inactive_threshold: Duration | None = None
    """Delete a group that has had no member this long, releasing (and counting) the
    events only it still needed (None: keep it until it is deleted)."""

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions must be at least 1")
        if self.max_events < 1:
            raise ValueError("max_events must be at least 1")
        if self.max_age is not None and not 0 < self.max_age < math.inf:
            raise ValueError("max_age must be a positive duration such as '10m' (or null)")
        if self.inactive_threshold is not None and not 0 < self.inactive_threshold < math.inf:
            raise ValueError(
                "inactive_threshold must be a positive duration such as '1h' (or null)"
            )


class TopicStats(NamedTuple):
    """What one topic of the memory connector holds, from :meth:`MemoryConnector.topic_stats`."""

    retained: int
    """Events some group has not committed yet (with no group: the events kept for groups
    that start at 'earliest'); what ``max_events`` bounds."""
    held: int
    """Events in memory: the retained ones and committed ones not yet freed (at most about
    ``_TRIM_STEP`` per partition, or a third of the retained ones)."""
    released: int
    """Events released under a limit before every group had read them: by ``max_age``,
    by ``when_full: drop_oldest``, by ``inactive_threshold`` (what only the deleted group
    needed), or, on a topic no group has joined, by ``max_events``."""
    groups: int
    """Consumer groups on the topic, with members or not."""


class _Partition:
    __slots__ = ("base", "events", "stamps")

    def __init__(self) -> None:
        self.base = 0  # the offset of events[0]
        self.events: list[Event] = []
        self.stamps: list[float] = []  # store time of each event, for start-at-time and age

    @property
    def end(self) -> int:
        return self.base + len(self.events)

    def free(self, offset: int) -> None:
        """Drop the events below ``offset`` from memory."""
        dead = offset - self.base
        if dead > 0:
            del self.events[:dead]
            del self.stamps[:dead]
            self.base = offset


class _Topic:
    def __init__(self, name: str, partitions: int, max_age: float | None) -> None:
        self.name = name
        self.partitions = [_Partition() for _ in range(partitions)]
        self.groups: dict[str, _Group] = {}
        self.space: anyio.Event | None = None  # set when a commit may have freed room
        self.headroom = 0  # events that surely fit; recomputed only when used up
        self.round_robin = itertools.cycle(range(partitions))
        self.max_age = max_age
        self.expire_at = math.inf if max_age is None else 0.0  # time.time() of the next look
        self.released = 0  # events released under a limit before every group read them
        self.last_stamp = 0.0  # the newest store time; stamps never go back (bisection)
        self.warned = False  # the first release under drop_oldest is logged, later counted

    def start(self, p: int) -> int:
        """The first retained offset of partition p: the lowest position a group has
        committed, or, without groups, the oldest event kept for groups to come."""
        groups = self.groups
        if not groups:
            return self.partitions[p].base
        return min(g.committed[p] for g in groups.values())

    def retained(self) -> int:
        """Events some group still needs (without groups: every event kept)."""
        return sum(part.end - self.start(p) for p, part in enumerate(self.partitions))

    def held(self) -> int:
        return sum(len(part.events) for part in self.partitions)

    def trim(self, p: int) -> None:
        """Free what every group has committed in partition p, when that is at least a
        quarter of what it holds (amortised O(1) per event), and make the slowest group
        the one whose commits call this again, ``_TRIM_STEP`` events on."""
        groups = self.groups
        if not groups:
            return
        slowest = min(groups.values(), key=lambda g: g.committed[p])
        low = slowest.committed[p]
        for group in groups.values():
            group.trim_at[p] = _NEVER
        slowest.trim_at[p] = low + _TRIM_STEP
        part = self.partitions[p]
        dead = low - part.base
        if dead > 0 and dead * 4 >= len(part.events):
            part.free(low)

    def trim_all(self) -> None:
        for p in range(len(self.partitions)):
            self.trim(p)

    def release_to(self, p: int, offset: int) -> int:
        """Release partition p's retained events below ``offset``; return how many."""
        first = self.start(p)
        if offset <= first:
            return 0
        if self.groups:
            for group in self.groups.values():
                group.skip_to(p, offset)
            self.trim(p)
        else:
            self.partitions[p].free(offset)
        return offset - first

    def release_oldest(self, count: int) -> int:
        """Release the ``count`` oldest retained events (by store time, across
        partitions), count them, and return how many there were."""
        parts = self.partitions
        cut = [self.start(p) for p in range(len(parts))]
        heap = [
            (part.stamps[cut[p] - part.base], p)
            for p, part in enumerate(parts)
            if cut[p] < part.end
        ]
        heapq.heapify(heap)
        left = count
        while left > 0 and heap:
            # The partition on top goes first for as long as its events come before the
            # next partition's first (a stamp, then a partition number, decides): a
            # whole run of a batch at a time, found by bisection, not one by one.
            p = heap[0][1]
            part = parts[p]
            stamps, base = part.stamps, part.base
            start = cut[p] - base
            stop = len(stamps)
            if len(heap) > 1:
                stamp, q = min(heap[1:3])  # the runner-up is a child of the top
                after = bisect_right if p < q else bisect_left
                stop = after(stamps, stamp, start, stop)
            taken = min(max(stop - start, 1), left)  # the top itself at least
            offset = cut[p] = cut[p] + taken
            left -= taken
            if offset < part.end:
                heapq.heapreplace(heap, (stamps[offset - base], p))
            else:
                heapq.heappop(heap)
        released = sum(self.release_to(p, offset) for p, offset in enumerate(cut))
        self.released += released
        return released

    def expire(self, now: float) -> int:
        """Release the retained events stored more than ``max_age`` ago; count them, and
        say when to look again. Return how many were released."""
        max_age = self.max_age
        assert max_age is not None
        cutoff = now - max_age
        released = 0
        oldest = now
        for p, part in enumerate(self.partitions):
            first = self.start(p)
            offset = part.base + bisect_left(part.stamps, cutoff, first - part.base)
            released += self.release_to(p, offset)
            first = self.start(p)
            part.free(first)  # and what every group read, whatever its amount
            if first < part.end:
                oldest = min(oldest, part.stamps[first - part.base])
        self.expire_at = oldest + max_age * (1 + _AGE_SLACK)
        if released:
            self.released += released
            log.debug("topic %r: released %d events older than %ss", self.name, released, max_age)
        return released

    def expire_due(self) -> None:
        """:meth:`expire`, when ``expire_at`` says a look is due."""
        now = time.time()
        if now >= self.expire_at:
            self.expire(now)

    def drop_groups(self, names: Sequence[str]) -> int:
        """Forget these groups and free what only they still needed; return how many
        retained events that was (a topic left without groups frees every event)."""
        before = self.retained()
        for name in names:
            del self.groups[name]
        for p, part in enumerate(self.partitions):
            part.free(self.start(p) if self.groups else part.end)
        self.trim_all()
        self.headroom = 0  # recomputed by the next publish
        self.notify_space()
        return before - self.retained()

    def idle(self, threshold: float, now: float) -> tuple[list[str], float]:
        """The groups without members for ``threshold`` seconds or more at ``now``
        (monotonic), and when the next of the others will be."""
        gone, due = [], math.inf
        for name, group in self.groups.items():
            if not group.members:
                deadline = group.idle_since + threshold
                if deadline <= now:
                    gone.append(name)
                else:
                    due = min(due, deadline)
        return gone, due

    def holders(self) -> str:
        """The groups furthest behind in the partition that retains the most, for error
        messages; those without members are marked."""
        if not self.groups:
            return "none"
        p = max(range(len(self.partitions)), key=lambda p: self.partitions[p].end - self.start(p))
        low = self.start(p)
        names = [
            f"{name!r}" + ("" if group.members else " (no members)")
            for name, group in self.groups.items()
            if group.committed[p] == low
        ]
        return ", ".join(sorted(names))

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
        self.trim_at = [_NEVER] * n  # a commit reaching it frees what all groups committed
        self.idle_since = time.monotonic()  # since when it has had no member
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
            if not self.members:
                self.idle_since = time.monotonic()

    def skip_to(self, p: int, offset: int) -> None:
        """Move past the events of partition p below ``offset``, which a limit released."""
        if self.committed[p] >= offset:
            return
        acked = {o for o in self.acked[p] if o >= offset}
        while offset in acked:
            acked.remove(offset)
            offset += 1
        self.acked[p] = acked
        self.committed[p] = offset
        self.next[p] = max(self.next[p], offset)
        heap = self.redeliver[p]
        if heap:
            self.redeliver[p] = [entry for entry in heap if entry[2] >= offset]
            heapq.heapify(self.redeliver[p])
        if self.attempts:
            for key in [k for k in self.attempts if k[0] == p and k[1] < offset]:
                del self.attempts[key]

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
        if topic.expire_at != math.inf:
            topic.expire_due()
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
                        topic.name,
                        p,
                        offset,
                        self.attempts.get((p, offset), 0) + 1,
                        part.stamps[offset - part.base],
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
            append = out.append
            make = _MemoryDelivery
            for offset in range(nxt, nxt + count):
                if acked and offset in acked:
                    continue
                i = offset - base
                append(
                    make(
                        self,
                        events[i],
                        name,
                        p,
                        offset,
                        attempts.get((p, offset), 0) + 1 if attempts else 1,
                        stamps[i],
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
        if committed >= self.trim_at[p]:
            self.topic.trim(p)
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

    def __init__(  # positional, and the slots set here: this runs once per event
        self,
        group: _Group,
        event: Event,
        topic: str,
        partition: int,
        offset: int,
        attempt: int,
        timestamp: float,
    ) -> None:
        # Delivery.__init__'s fields, set here rather than through a second call.
        self.event = event
        self.topic = topic
        self.partition = partition
        self.offset = offset
        extensions = event.extensions  # the partitionkey as text, as Event.partitionkey
        key = extensions.get("partitionkey") if extensions else None
        self.key = key if key is None or type(key) is str else str(key)
        self.attempt = attempt
        self.timestamp = timestamp
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
        self._new_event: Callable[[], anyio.Event] = anyio.Event
        self.partitions: list[int] = []
        self.cursor = 0

    def wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def _start(self) -> None:
        # The running backend's own Event class: anyio.Event() looks the backend up on
        # every call, and fetch makes one each time it waits.
        self._new_event = type(anyio.Event())
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
            # One event for every fetch waiting (two loops may read one subscription):
            # wake(), and close(), wake them all.
            wakeup = self._wakeup
            if wakeup is None:
                self._wakeup = wakeup = self._new_event()
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
        self._unyielded = 0  # events stored since publish last gave the loop a turn

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
                raise RejectedError(f"topic name must be a non-empty string, got {name!r}")
            topic = self._topics[name] = _Topic(name, self.config.partitions, self.config.max_age)
        return topic

    def _join(self, consumer: _MemoryConsumer) -> _Group:
        self._check_open()
        topic = self._topic(consumer.topic)
        group = topic.groups.get(consumer.group)
        if group is None:
            topic.expire_due()
            group = _Group(topic, consumer.group, consumer._start_at)
            topic.groups[consumer.group] = group
            topic.trim_all()  # the new group may be the slowest of some partitions
        group.join(consumer)
        self._consumers.add(consumer)
        return group

    # -- what the topics hold --------------------------------------------------------------

    def topic_stats(self) -> dict[str, TopicStats]:
        """What each topic holds and has released, by name (read by the sidecar's
        ``/topics``). Costs a look at every partition of every topic: not for a hot path."""
        stats = {}
        for name, topic in self._topics.items():
            self._apply_limits(topic)
            stats[name] = TopicStats(
                retained=topic.retained(),
                held=topic.held(),
                released=topic.released,
                groups=len(topic.groups),
            )
        return stats

    def released(self) -> dict[str, int]:
        """Events released under a limit before every group read them, for each topic
        that released any (``eventmesh_events_released_total``); cheap enough for a scrape."""
        return {name: t.released for name, t in self._topics.items() if t.released}

    async def delete_group(self, topic: str, group: str) -> bool:
        """Forget consumer ``group`` on ``topic``: its positions go, and the events only it
        still needed are freed (they are not counted as released: nobody needs them).

        Returns False when the topic has no such group. Raises ``SubscribeError`` while
        the group has members: close them first (Kafka refuses to delete a non-empty
        group for the same reason).
        """
        self._check_open()
        t = self._topics.get(topic)
        g = t.groups.get(group) if t is not None else None
        if t is None or g is None:
            return False
        if g.members:
            raise SubscribeError(
                f"group {group!r} on topic {topic!r} has {len(g.members)} members; close "
                "its subscriptions before deleting it"
            )
        t.drop_groups([group])
        log.info("group %r on topic %r deleted", group, topic)
        return True

    def _apply_limits(self, t: _Topic) -> float:
        """Release what ``max_age`` expired and delete the groups idle for
        ``inactive_threshold``; return when (monotonic) the next group will be idle."""
        t.expire_due()
        return self._forget_idle(t)

    def _forget_idle(self, t: _Topic) -> float:
        """Delete t's groups idle for ``inactive_threshold``, counting what only they
        needed as released; return when (monotonic) the next one will be due."""
        threshold = self.config.inactive_threshold
        if threshold is None or not t.groups:
            return math.inf
        gone, due = t.idle(threshold, time.monotonic())
        if gone:
            released = t.drop_groups(gone)
            t.released += released
            log.info(
                "topic %r: deleted groups %s, without members for %ss (inactive_threshold), "
                "releasing %d events only they still needed",
                t.name,
                ", ".join(sorted(gone)),
                threshold,
                released,
            )
        return due

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, topic: str, events: Sequence[Event]) -> None:
        self._check_open()
        t = self._topic(topic)
        count = len(events)
        if not count:
            return
        if self._unyielded >= _YIELD_EVERY:
            # Storing waits for nothing, so a producer publishing in a loop would hold the
            # event loop: its consumers could not run until it stopped, nor could anything
            # else. Give them a turn, before storing: a cancellation met here stores
            # nothing, and once stored, nothing waits before the call returns.
            self._unyielded = 0
            await anyio.lowlevel.checkpoint()
            self._check_open()
        if t.headroom < count:
            await self._make_room(t, count)
        t.headroom -= count
        stamp = time.time()
        if stamp < t.last_stamp:  # the clock stepped back: stamps in a partition never do
            stamp = t.last_stamp
        t.last_stamp = stamp
        if stamp >= t.expire_at:
            t.expire(stamp)
        partitions = t.partitions
        n = len(partitions)
        if not any(event.extensions for event in events):
            # No keys: the batch is dealt round robin, a slice per partition, in C.
            first = next(t.round_robin)
            for i in range(min(n, count)):
                part = partitions[(first + i) % n]
                dealt = events[i::n]
                part.events.extend(dealt)
                part.stamps.extend([stamp] * len(dealt))
            for _ in range((count - 1) % n):  # where the next one starts, as if one by one
                next(t.round_robin)
        else:
            for event in events:
                key = event.extensions.get("partitionkey") if event.extensions else None
                part = partitions[hash(str(key)) % n if key is not None else next(t.round_robin)]
                part.events.append(event)
                part.stamps.append(stamp)
        for group in t.groups.values():
            for member in group.members:
                member.wake()
        self._unyielded += count

    def _fits(self, t: _Topic, count: int) -> bool:
        t.headroom = self.config.max_events - t.retained()
        return t.headroom >= count

    async def _make_room(self, t: _Topic, count: int) -> None:
        """Return once ``count`` more events fit in topic t, as ``when_full`` says."""
        config = self.config
        limit = config.max_events
        if count > limit:
            raise RejectedError(
                f"a batch of {count} events is more than topic {t.name!r} can ever hold "
                f"(max_events={limit}); publish it in batches of at most {limit} events, "
                "or raise max_events"
            )
        idle_due = self._apply_limits(t)
        if self._fits(t, count):
            return
        if not t.groups or config.when_full == "drop_oldest":
            self._drop_oldest(t, count)
            return
        if config.when_full == "fail":
            raise TopicFullError(
                f"topic {t.name!r} holds {t.retained()} events that its groups have not "
                f"consumed (max_events={limit}, when_full=fail; the oldest are held by "
                f"{t.holders()}); add consumers, delete groups nobody reads, raise "
                "max_events, or set when_full: wait"
            )
        with anyio.move_on_after(config.full_timeout) as scope:
            while True:
                if t.space is None:
                    t.space = anyio.Event()
                space = t.space
                wait = min(t.expire_at - time.time(), idle_due - time.monotonic())
                with anyio.move_on_after(None if wait == math.inf else max(wait, 0.0)):
                    await space.wait()
                self._check_open()
                idle_due = self._apply_limits(t)
                if self._fits(t, count):
                    return
                if not t.groups:  # every group was deleted meanwhile
                    self._drop_oldest(t, count)
                    return
        assert scope.cancelled_caught
        raise TopicFullError(
            f"topic {t.name!r} stayed full for {config.full_timeout}s (max_events={limit}; "
            f"the oldest events are held by {t.holders()}); its consumers are too slow or "
            "gone: add consumers or delete groups nobody reads"
        )

    def _drop_oldest(self, t: _Topic, count: int) -> None:
        """Make room by releasing the oldest retained events, counted. A topic no group
        has joined frees an eighth of ``max_events`` at least, so that it does so seldom."""
        limit = self.config.max_events
        excess = count - t.headroom
        released = t.release_oldest(excess if t.groups else max(excess, limit // 8))
        self._fits(t, count)
        if t.groups and not t.warned:
            t.warned = True
            log.warning(
                "topic %r is full (max_events=%d, when_full=drop_oldest): released its %d "
                "oldest events unread; releases are counted in "
                "eventmesh_events_released_total and on GET /topics",
                t.name,
                limit,
                released,
            )

    async def read(
        self,
        topic: str,
        *,
        since: datetime | None = None,
        after: Mapping[int, int] | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Browse the events the topic still holds (read or not), oldest first across
        partitions, without consuming them; at most ``browse.MAX_READ`` per call."""
        self._check_open()
        limit = check_read(topic, limit, after)
        t = self._topics.get(topic)
        if t is None:
            return []
        t.expire_due()
        return read_log(t.partitions, since=since, after=after, limit=limit)

    def subscribe(self, topic: str, group: str, *, start: StartPosition = "latest") -> Consumer:
        self._check_open()
        if not isinstance(topic, str) or not topic:
            raise RejectedError(f"topic name must be a non-empty string, got {topic!r}")
        if not isinstance(group, str) or not group:
            raise SubscribeError(f"group must be a non-empty string, got {group!r}")
        return _MemoryConsumer(self, topic, group, start)
