"""The loop side of the local connector's topics: partitions with their in-memory tail,
and consumer groups with their positions (the memory connector's semantics, over a
log kept on disk).

Nothing here touches SQLite: what is not in a partition's tail is loaded by the
connector (``local.py``), in a worker thread.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import msgspec

from eventmesh.connectors import _sqlite
from eventmesh.connectors._local_config import encode
from eventmesh.connectors.base import Consumer, Delivery, StartPosition
from eventmesh.errors import EventValidationError
from eventmesh.event import Event

if TYPE_CHECKING:
    from eventmesh.connectors.local import LocalConnector

__all__ = ["MAX_AHEAD", "Append", "Group", "LocalConsumer", "LocalDelivery", "Part", "Topic"]

MAX_AHEAD = 10_000
"""The most events of a partition a group hands out past its committed position. An
event held unacked (a handler still on it, a nack with a long delay) stops the
partition there until it is acked or comes again: what a group tracks above its commit
(acks, attempts), what a rebalance walks and what a restart delivers again stay bounded."""


class Part:
    """One partition as the loop sees it: offsets [first, end) are stored; the newest
    of them (from ``base``) are also held in memory for consumers that keep up, with
    the bytes each takes stored (``sizes``, ``held`` their sum)."""

    __slots__ = ("base", "events", "first", "held", "sizes", "stamps")

    def __init__(self, first: int, end: int) -> None:
        self.first = first
        self.base = end
        self.events: list[Event] = []
        self.stamps: list[float] = []
        self.sizes: list[int] = []
        self.held = 0

    @property
    def end(self) -> int:
        return self.base + len(self.events)

    def add(self, first: int, run: list[Event], stamp: float, size: int) -> None:
        """Hold ``run``, stored from offset ``first`` at ``size`` bytes an event, at the
        end of the tail (a new tail when it does not follow the old one)."""
        if first != self.end:
            self.clear(first)
        count = len(run)
        self.events += run
        self.stamps += [stamp] * count
        self.sizes += [size] * count
        self.held += size * count

    def clear(self, end: int) -> None:
        """Hold nothing: the offsets below ``end`` are read from disk."""
        self.events = []
        self.stamps = []
        self.sizes = []
        self.held = 0
        self.base = end

    def trim(self, cap: int, cap_bytes: int, low: int) -> None:
        """Free the events every group was handed (those below ``low``) once they are a
        quarter of the tail or more, keeping ``cap // 8`` at least; past ``cap`` events
        or ``cap_bytes`` bytes, free the oldest down to half of it whatever the groups (a
        group that far behind reads the disk)."""
        n = len(self.events)
        drop = 0
        if n > cap // 8:
            drop = min(low - self.base, n - cap // 8)
            if n - drop > cap:
                drop = n - cap // 2
            if drop <= 0 or (drop * 4 < n and n <= cap):
                drop = 0
        sizes = self.sizes
        kept = self.held - sum(sizes[:drop]) if drop else self.held
        if kept > cap_bytes:
            half = cap_bytes // 2
            while drop < n and kept > half:
                kept -= sizes[drop]
                drop += 1
        if drop > 0:
            del self.events[:drop]
            del self.stamps[:drop]
            del sizes[:drop]
            self.held = kept
            self.base += drop


class Topic:
    def __init__(self, tid: int, name: str, parts: list[Part]) -> None:
        self.tid = tid
        self.name = name
        self.parts = parts
        self.groups: dict[str, Group] = {}
        self.round_robin = itertools.cycle(range(len(parts)))
        self.key_parts: dict[object, int] = {}  # partitionkey -> partition, bounded by publish
        self.released = 0


class Append(_sqlite.Job):
    """Store events on a topic; once committed, add them to the partitions' tails and
    wake the topic's consumers. Raises ``EventValidationError`` (with ``index``, of
    ``events``) when an event cannot be encoded for the store."""

    __slots__ = ("cap", "cap_bytes", "rows", "runs", "topic")

    def __init__(
        self, cap: int, cap_bytes: int, topic: Topic, events: Sequence[Event], parts: list[int]
    ) -> None:
        super().__init__(len(events))
        self.cap = cap
        self.cap_bytes = cap_bytes
        self.topic = topic
        by_part: dict[int, list[Event]] = {}
        for event, p in zip(events, parts, strict=True):
            run = by_part.get(p)
            if run is None:
                by_part[p] = [event]
            else:
                run.append(event)
        self.runs = by_part
        try:
            self.rows = [(p, len(run), encode(run)) for p, run in by_part.items()]
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise _unstorable(events, exc) from exc

    def apply(self, writer: _sqlite.Writer) -> tuple[float, list[int]]:
        return writer.append(self.topic.tid, self.rows)

    def finish(self, result: Any, error: BaseException | None) -> None:
        if error is None:
            stamp, firsts = result
            topic = self.topic
            parts = topic.parts
            # Only what a group with members still has to take is held: a topic no
            # group reads now holds nothing, and a group that joins reads the disk.
            readers = [g for g in topic.groups.values() if g.members]
            for (p, count, body), run, first in zip(
                self.rows, self.runs.values(), firsts, strict=True
            ):
                part = parts[p]
                if not readers:
                    part.clear(first + count)
                    continue
                part.add(first, run, stamp, -(-len(body) // count))
                low = min(g.next[p] for g in readers)
                part.trim(self.cap, self.cap_bytes, low)
            for group in readers:
                for member in group.members:
                    member.wake()
        super().finish(None, error)


def _unstorable(events: Sequence[Event], exc: Exception) -> EventValidationError:
    """The error for events the store cannot encode, naming the first that fails."""
    for index, event in enumerate(events):  # only to say which event it was
        try:
            encode([event])
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as one:
            error = EventValidationError(
                f"event {event.id!r} cannot be stored by the local store: {one}; its data "
                "must be JSON-like (str, int within 64 bits, float, bool, None, lists and "
                "dicts of them, bytes) and its text valid Unicode",
                attribute="data",
            )
            return error.in_batch(index) if len(events) > 1 else error
    return EventValidationError(f"the events cannot be stored by the local store: {exc}")


class _Owner(Protocol):
    def positions_changed(self, group: Group) -> None: ...


class Group:
    """A consumer group: committed positions (saved by the connector), what was handed
    out, acked above the commit, or nacked for later; partitions shared by members."""

    def __init__(self, topic: Topic, name: str, committed: list[int], owner: _Owner) -> None:
        self.topic = topic
        self.name = name
        self.owner_of = owner
        n = len(topic.parts)
        self.committed = committed
        self.next = list(committed)
        self.acked: list[set[int]] = [set() for _ in range(n)]
        self.redeliver: list[list[tuple[float, int, int]]] = [[] for _ in range(n)]
        self.attempts: dict[tuple[int, int], int] = {}
        self.members: list[LocalConsumer] = []
        self.owner: list[LocalConsumer | None] = [None] * n
        self.deleted = False
        """Set by ``delete_group``: late acks of its deliveries change and save nothing."""
        self._seq = itertools.count()

    def join(self, member: LocalConsumer) -> None:
        self.members.append(member)
        self._rebalance()

    def leave(self, member: LocalConsumer) -> None:
        member.partitions = []
        if member in self.members:
            self.members.remove(member)
            self._rebalance()

    def skip_to(self, p: int, offset: int) -> None:
        """Move past partition p's events below ``offset``, which retention deleted."""
        if self.deleted or self.committed[p] >= offset:
            return
        self._open_window(p, offset)
        acked = {o for o in self.acked[p] if o >= offset}
        while offset in acked:
            acked.remove(offset)
            offset += 1
        self.acked[p] = acked
        self.committed[p] = offset
        self.next[p] = max(self.next[p], offset)
        self.redeliver[p] = [e for e in self.redeliver[p] if e[2] >= offset]
        heapq.heapify(self.redeliver[p])
        self.owner_of.positions_changed(self)

    def _rebalance(self) -> None:
        """Give partitions round-robin to members; a moved partition restarts at its commit."""
        members = self.members
        for p in range(len(self.owner)):
            new = members[p % len(members)] if members else None
            if new is not self.owner[p]:
                self.owner[p] = new
                acked = self.acked[p]
                nacked = {offset for _, _, offset in self.redeliver[p]}
                for offset in range(self.committed[p], self.next[p]):
                    if offset not in acked and offset not in nacked:
                        self.attempts[(p, offset)] = self.attempts.get((p, offset), 0) + 1
                self.next[p] = self.committed[p]
                self.redeliver[p].clear()
        for member in members:
            member.partitions = [p for p, o in enumerate(self.owner) if o is member]
            member.wake()

    def plan(self, member: LocalConsumer, max_events: int) -> list[tuple[int, int]]:
        """Reserve up to ``max_events`` (partition, offset) pairs for ``member``: due
        redeliveries first, then new events from a rotating partition."""
        out: list[tuple[int, int]] = []
        now = time.monotonic()
        for p in member.partitions:
            heap = self.redeliver[p]
            while heap and heap[0][0] <= now and len(out) < max_events:
                _, _, offset = heapq.heappop(heap)
                if offset >= self.committed[p] and offset not in self.acked[p]:
                    out.append((p, offset))
        parts = member.partitions
        if not parts or len(out) >= max_events:
            return out
        first = member.cursor % len(parts)
        member.cursor += 1
        for i in range(len(parts)):
            p = parts[(first + i) % len(parts)]
            part = self.topic.parts[p]
            nxt = self.next[p]
            end = min(part.end, self.committed[p] + MAX_AHEAD)
            if nxt >= end:
                continue
            if nxt < part.base:  # on disk only: read up to the tail, the rest next time
                end = min(end, part.base)
            count = min(end - nxt, max_events - len(out))
            acked = self.acked[p]
            out.extend((p, o) for o in range(nxt, nxt + count) if not (acked and o in acked))
            self.next[p] = nxt + count
            if len(out) >= max_events:
                break
        return out

    def give_back(self, member: LocalConsumer, plan: list[tuple[int, int]]) -> None:
        """Pairs a fetch reserved and could not hand out (cancelled, or failing, while it
        read them from disk): due again at once for the member's next fetch, without
        counting an attempt. A partition that moved meanwhile restarts at its commit."""
        now = time.monotonic()
        for p, offset in plan:
            owned = p in member.partitions
            if owned and offset >= self.committed[p] and offset not in self.acked[p]:
                heapq.heappush(self.redeliver[p], (now, next(self._seq), offset))

    def next_due(self, member: LocalConsumer) -> float | None:
        due = [self.redeliver[p][0][0] for p in member.partitions if self.redeliver[p]]
        return min(due) if due else None

    def _open_window(self, p: int, committed: int) -> None:
        """The commit of partition p moves to ``committed``: wake its owner if it was
        waiting for that (MAX_AHEAD events handed out past the old commit)."""
        if self.next[p] >= self.committed[p] + MAX_AHEAD and committed > self.committed[p]:
            owner = self.owner[p]
            if owner is not None:
                owner.wake()

    def ack(self, p: int, offset: int) -> None:
        committed = self.committed[p]
        if offset < committed or self.deleted:
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
        self._open_window(p, committed)
        self.committed[p] = committed
        self.owner_of.positions_changed(self)

    def rows(self) -> list[tuple[Any, ...]]:
        """The rows that save this group's positions (none once it is deleted)."""
        if self.deleted:
            return []
        tid, name = self.topic.tid, self.name
        return [(tid, name, p, c) for p, c in enumerate(self.committed)]

    def nack(self, p: int, offset: int, attempt: int, delay: float) -> None:
        if self.deleted or offset < self.committed[p] or offset in self.acked[p]:
            return
        self.attempts[(p, offset)] = attempt
        heapq.heappush(self.redeliver[p], (time.monotonic() + delay, next(self._seq), offset))
        owner = self.owner[p]
        if owner is not None:
            owner.wake()


class LocalDelivery(Delivery):
    __slots__ = ("_group", "_settled")

    def __init__(self, group: Group, event: Event, **kw: object) -> None:
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


class LocalConsumer(Consumer):
    """One member of a consumer group of the local connector."""

    def __init__(
        self, connector: LocalConnector, topic: str, group: str, start: StartPosition
    ) -> None:
        self._connector = connector
        self.topic = topic
        self.group = group
        self._start_at = start
        self._group: Group | None = None
        self._wakeup: anyio.Event | None = None
        self.partitions: list[int] = []
        self.cursor = 0

    def wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def _start(self) -> None:
        self._group = await self._connector._join(self)

    async def fetch(self, max_events: int = 256, timeout: float | None = None) -> list[Delivery]:
        self._check_fetch()
        group = self._group
        assert group is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.closed:
                return []
            plan = group.plan(self, max_events)
            if plan:
                try:
                    batch = await self._connector._deliveries(group, plan)
                except BaseException:
                    group.give_back(self, plan)  # not handed out: not lost either
                    raise
                if batch:
                    return batch
                continue
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
        parts = group.topic.parts
        return sum(parts[p].end - group.committed[p] for p in self.partitions)

    async def _close(self) -> None:
        group = self._group
        if group is not None:
            group.leave(self)
        self._connector._consumers.discard(self)
        self.wake()
        if group is not None:
            await self._connector._save_group(group)
