"""De-duplication: a topic with ``dedupe:`` stores each (``source``, ``id``) once per window.

The mesh keeps one :class:`Deduper` per such topic: a dict from each event's key to the
:class:`_Mark` of the publish call that stored it, and those marks in a deque, oldest
first. The key is a 16-byte digest of ``source`` and ``id`` (:func:`key_of`), not the
strings themselves, which may be as long as an event: so each key costs the same
memory however long they are. A publish looks each event's key up once
(``setdefault``): a new key is *reserved* for this call before the connector is asked to
store anything, so a concurrent publish of the same key waits for this one instead of
storing it again; a key stored within the window is dropped and counted; the caller is
answered as if it had been stored (the same ids come back). When the store fails, the
call's reservations are released, so a retry stores the events. Expired keys leave from
the front as publishes arrive; past ``max_entries`` keys the oldest are forgotten (and
counted), so memory is bounded whatever producers send.

The window lives in the process. At start, :meth:`Deduper.load` rebuilds it from what
the connector still holds (:meth:`Connector.read`), so on a durable connector it
survives a restart; a connector that cannot browse starts it empty. A connector that
keeps a duplicate window of its own (NATS JetStream's ``Nats-Msg-Id``) is told the
window through :class:`DuplicateWindow`, so retries through other processes are caught
too. Connectors never import this module; docs/delivery.md says what each promises.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Final, Protocol, runtime_checkable

import anyio
import msgspec

from eventmesh._duration import Duration
from eventmesh.connectors.base import Connector
from eventmesh.delivery.policy import check_range
from eventmesh.errors import ConnectorError, RejectedError
from eventmesh.event import Event

__all__ = ["DedupeConfig", "Deduper", "DuplicateWindow", "Write", "key_of"]

log = logging.getLogger(__name__)

MAX_WINDOW: Final = 7 * 86400.0
"""The longest window (a week): the map is bounded by count, but a window is not a log."""
MAX_ENTRIES: Final = 10_000_000
"""The most keys one topic may keep (about 110 bytes each, however long source and id)."""
_NARROWEST: Final = 64
"""At start, the window is read back from now, first its last 1/64, then doubling."""
_PAGE: Final = 1000
"""Events asked of :meth:`Connector.read` at once at start (a page holds whole events)."""

Write = Callable[[Sequence[Event]], Awaitable[None]]
"""Stores events on the topic (the mesh's own store step); raises when it cannot."""


class DedupeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``topics.<name>.dedupe``: drop an event whose ``source`` and ``id`` were stored on
    the topic within ``window``, answering its producer as if it was stored."""

    window: Duration = Duration(600.0)
    """How long a stored (``source``, ``id``) is remembered (above 0, at most 7 days)."""
    max_entries: int = 100_000
    """The most keys remembered (1 to 10,000,000); past it the oldest are forgotten first,
    and counted (``eventmesh_dedupe_forgotten_total``)."""

    def __post_init__(self) -> None:
        check_range("window", self.window, 0, MAX_WINDOW, above=True, unit="s")
        check_range("max_entries", self.max_entries, 1, MAX_ENTRIES)


@runtime_checkable
class DuplicateWindow(Protocol):
    """A connector whose backend drops duplicates itself (NATS JetStream's duplicate
    window): the mesh tells it each de-duplicated topic's window before the first publish,
    and the connector applies it where it creates the topic's storage."""

    def duplicate_window(self, topic: str, seconds: float) -> None:
        """Keep duplicates of ``topic`` out for ``seconds`` where the backend can."""


def key_of(event: Event) -> bytes:
    """The window's key for ``event``: 16 bytes of BLAKE2b over its ``source``, led by
    its length (so no other split of the same text gives the same input), and ``id``;
    the hash the NATS connector makes its ``Nats-Msg-Id`` of. Two events share it when both
    attributes are equal, but for a hash collision (about one in 10**24 with a full
    window of 10,000,000 keys); its size does not depend on theirs."""
    source = event.source
    data = f"{len(source)}:{source}{event.id}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).digest()


class _Mark:
    """The keys one publish call reserved, in order, and their state: pending until the
    store returns, then stored (at ``stamp``) or released. Keys rebuilt at start share a
    mark per second of store time."""

    __slots__ = ("done", "keys", "next", "stamp", "state")

    def __init__(self, stamp: float, state: int) -> None:
        self.stamp = stamp
        self.state = state
        self.keys: list[bytes] = []
        self.next = 0
        """Keys before this index were expired or forgotten already."""
        self.done: anyio.Event | None = None

    def settle(self, state: int) -> None:
        self.state = state
        if self.done is not None:
            self.done.set()

    async def wait(self) -> None:
        if self.state == _PENDING:
            if self.done is None:
                self.done = anyio.Event()
            await self.done.wait()


_PENDING: Final = 0
_STORED: Final = 1
_RELEASED: Final = 2


class Deduper:
    """The window of one topic. ``clock`` gives seconds since the epoch (the time
    connectors stamp stored events with, so a window rebuilt after a restart lines up).

    ``_seen`` maps each key (:func:`key_of`) to its mark (a plain dict: one
    ``setdefault`` per event);
    ``_marks`` holds the marks oldest first, so expiry and the ``max_entries`` bound take
    keys from the front without searching.
    """

    __slots__ = (
        "_clock",
        "_marks",
        "_pending",
        "_released",
        "_seen",
        "duplicates",
        "forgotten",
        "max_entries",
        "topic",
        "window",
    )

    def __init__(
        self,
        topic: str,
        config: DedupeConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self.window = float(config.window)
        self.max_entries = config.max_entries
        self._clock = clock
        self._seen: dict[bytes, _Mark] = {}
        self._marks: deque[_Mark] = deque()
        self._released = 0
        """Released marks left inside ``_marks`` (not at its end when released)."""
        self._pending = 0
        """Keys reserved by publishes still in progress."""
        self.duplicates = 0
        """Events dropped because their key was stored within the window."""
        self.forgotten = 0
        """Keys forgotten before their window ended, to stay within ``max_entries``."""

    def __len__(self) -> int:
        """Keys remembered now (stored, or reserved by a publish in progress)."""
        return len(self._seen)

    async def store(self, events: Sequence[Event], write: Write) -> None:
        """Store with ``write`` the events of ``events`` not stored within the window,
        each key once; returns once every event is stored, by this call or another.
        Raises what ``write`` raises, after releasing this call's reservations."""
        todo = events
        while todo:
            mark = _Mark(float(self._clock()), _PENDING)
            fresh, blocked = self._reserve(todo, mark)
            if fresh:
                self._pending += len(fresh)
                try:
                    await write(fresh)
                except BaseException:
                    self._pending -= len(fresh)
                    self._release(mark)
                    raise
                self._pending -= len(fresh)
                mark.settle(_STORED)
                # Only stored keys count against max_entries (a reservation may fail).
                excess = len(self._seen) - self._pending - self.max_entries
                if excess > 0:
                    self._forget(excess)
            for other in {id(m): m for _, m in blocked}.values():
                await other.wait()  # another call stores these keys: its outcome decides
            todo = [event for event, _ in blocked]

    def _reserve(
        self, events: Sequence[Event], mark: _Mark
    ) -> tuple[list[Event], list[tuple[Event, _Mark]]]:
        """The events to store now (their keys reserved under ``mark``) and those whose
        key another call is storing; counts and drops the rest."""
        seen = self._seen
        cutoff = mark.stamp - self.window
        self._expire(cutoff)
        keys = mark.keys
        fresh: list[Event] = []
        blocked: list[tuple[Event, _Mark]] = []
        for event in events:
            key = key_of(event)
            size = len(seen)
            found = seen.setdefault(key, mark)
            if len(seen) != size:
                fresh.append(event)
                keys.append(key)
            elif found is mark:
                self.duplicates += 1  # twice in this call
            elif found.state == _STORED and found.stamp >= cutoff:
                self.duplicates += 1
            elif found.state == _PENDING:
                blocked.append((event, found))
            else:  # expired behind a pending key: store it again
                seen[key] = mark
                fresh.append(event)
                keys.append(key)
        if keys:  # a call that reserved nothing leaves no mark behind
            self._marks.append(mark)
        return fresh, blocked

    def _expire(self, cutoff: float) -> None:
        """Forget the keys of the marks at the front that expired (or were released)."""
        marks, seen = self._marks, self._seen
        while marks:
            mark = marks[0]
            if mark.state == _PENDING or (mark.state == _STORED and mark.stamp >= cutoff):
                return
            keys = mark.keys
            for i in range(mark.next, len(keys)):
                key = keys[i]
                if seen.get(key) is mark:
                    del seen[key]
            marks.popleft()

    def _forget(self, count: int) -> None:
        """Forget the ``count`` oldest keys held (to stay within ``max_entries``)."""
        marks, seen = self._marks, self._seen
        while marks and count:
            mark = marks[0]
            keys = mark.keys
            while mark.next < len(keys) and count:
                key = keys[mark.next]
                mark.next += 1
                if seen.get(key) is mark:
                    del seen[key]
                    self.forgotten += 1
                    count -= 1
            if mark.next >= len(keys):
                marks.popleft()

    def _release(self, mark: _Mark) -> None:
        """Forget the keys ``mark`` reserved, so that a retry stores their events."""
        seen = self._seen
        for key in mark.keys[mark.next :]:
            if seen.get(key) is mark:
                del seen[key]
        mark.keys = []
        mark.settle(_RELEASED)
        marks = self._marks
        if marks and marks[-1] is mark:
            marks.pop()
        else:  # a later call's mark is behind it: drop released marks now and then
            self._released += 1
            if self._released > 64 and 2 * self._released > len(marks):
                self._marks = deque(m for m in marks if m.state != _RELEASED)
                self._released = 0

    # -- after a restart -----------------------------------------------------------------

    async def load(self, connector: Connector) -> int:
        """Rebuild the window from the events ``connector`` still holds on the topic:
        the newest of those stored within the window, up to ``max_entries``. Returns how
        many keys were loaded; a connector that cannot browse (``RejectedError``) leaves
        the window empty, and one whose read fails (``ConnectorError``) leaves what was
        read before, with a warning: the mesh starts either way.

        Reads go back from now: the last 1/64 of the window first, then spans twice as
        long before it, each read page by page, until ``max_entries`` keys are found or
        the whole window was read. So a window holding far more events than
        ``max_entries`` costs about twice ``max_entries`` events read, not all of them.
        """
        now = float(self._clock())
        window, limit = self.window, self.max_entries
        chunks: list[list[tuple[float, bytes]]] = []
        total = 0
        upper = math.inf
        span = window / _NARROWEST
        try:
            while True:
                chunk = await self._read_span(connector, now - span, upper, now, limit - total)
                chunks.append(chunk)
                total += len(chunk)
                if total >= limit or span >= window:
                    break
                upper = now - span
                span = min(span * 2, window)
        except RejectedError as exc:
            if not chunks:
                log.info("topic %r: de-duplication starts empty: %s", self.topic, exc)
                return 0
            log.warning("topic %r: de-duplication window rebuilt in part: %s", self.topic, exc)
        except ConnectorError as exc:
            # The mesh starts anyway: publishing matters more than catching the retries
            # of events stored before the restart.
            log.warning(
                "topic %r: de-duplication window rebuilt in part (%d keys): reading connector "
                "%r failed: %s",
                self.topic,
                total,
                connector.name,
                exc,
            )
        # Oldest first: the chunks were read newest span first, each in store order.
        found = sorted((key for chunk in reversed(chunks) for key in chunk), key=itemgetter(0))
        self._restore(found[-limit:], now - window)
        log.info(
            "topic %r: de-duplication window rebuilt with %d keys from connector %r",
            self.topic,
            len(self._seen),
            connector.name,
        )
        return len(self._seen)

    async def _read_span(
        self, connector: Connector, since: float, upper: float, now: float, most: int
    ) -> list[tuple[float, bytes]]:
        """The keys of the newest ``most`` events stored at or after ``since`` and before
        ``upper``, in store order, read page by page (a page is in store-time order
        across partitions, so the first event at ``upper`` or later ends the span). So
        memory holds at most one page of events (:data:`_PAGE`) and ``most`` keys."""
        found: deque[tuple[float, bytes]] = deque(maxlen=most)
        page_size = min(self.max_entries, _PAGE)
        cursor: dict[int, int] = {}
        start = datetime.fromtimestamp(since, UTC)
        while True:
            page = await connector.read(
                self.topic, since=start, after=cursor or None, limit=page_size
            )
            moved = False
            for stored in page:
                stamp = now if stored.timestamp is None else float(stored.timestamp)
                if stamp >= upper:
                    return list(found)
                if stored.offset > cursor.get(stored.partition, -1):
                    cursor[stored.partition] = stored.offset
                    moved = True
                found.append((stamp, key_of(stored.event)))
            if not moved:
                return list(found)  # the end (an empty page), or a connector ignoring the cursor

    def _restore(self, found: list[tuple[float, bytes]], cutoff: float) -> None:
        """Hold the keys of ``found`` (oldest first), a mark per second of store time
        stamped with its newest key's time, so none is forgotten before its window ends."""
        seen, marks = self._seen, self._marks
        mark: _Mark | None = None
        first = 0.0
        for stamp, key in found:
            if stamp < cutoff:
                continue
            if mark is None or stamp > first + 1.0:
                mark = _Mark(stamp, _STORED)
                first = stamp
                marks.append(mark)
            seen[key] = mark  # a key found twice is held by its newer mark
            mark.keys.append(key)
            mark.stamp = max(mark.stamp, stamp)
