"""Dead letters you can look at and replay: browse a topic, find an event, republish.

What the sidecar's ``GET /topics/{topic}/events``, ``POST /deadletters/{topic}/replay``,
the ``eventmesh dlq`` commands and ``mesh.dead_letters(topic)`` share. Everything here
reads through :meth:`Connector.read`, so nothing is consumed: no group joins, nothing
is acked, and a group that joins later still gets every event.

* **Browsing** returns a page of retained events with where and when each was stored,
  and a cursor (``"partition:offset,..."``, the last offset seen per partition) for the
  next page. A page holds at most :data:`MAX_PAGE` events.
* **Replaying** selects dead letters (by the time they were dead-lettered, their
  ``deadletterreason``, their ``deadlettergroup``), republishes each to the topic in its
  ``deadlettertopic`` with every ``deadletter*`` extension removed (same id, source and
  data, so consumers see the event they failed on), and records each replayed dead
  letter by its position on the dead-letter topic, so a second replay skips it. The
  events go straight to the original topic's connector (``Connector.republish``), so
  neither the topic's ``dedupe:`` window nor a backend's own de-duplication by
  ``source`` and ``id`` (JetStream's ``Nats-Msg-Id``) drops them as a producer's
  retry. The records are kept in the dead-letter topic's connector
  (``state("deadletter-replays")``) when it keeps state, else in this process (lost on
  restart): the newest :data:`MAX_MEMORY_RECORDS`, less those of dead letters retention
  removed (``_gone``). A record is written after its event is stored: a crash between
  the two replays that event again (at-least-once, as everything in the mesh).
"""

from __future__ import annotations

import abc
import base64
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeAlias

import anyio
import msgspec

from eventmesh._status import NotFoundError
from eventmesh.connectors.base import Connector, StateStore, StoredEvent
from eventmesh.errors import ConfigError, EventMeshError
from eventmesh.event import Event, encode_json

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

    from eventmesh.mesh import Mesh

__all__ = [
    "BUCKET",
    "MAX_PAGE",
    "MAX_REPLAY",
    "SCAN_LIMIT",
    "BlockingDeadLetters",
    "DeadLetters",
    "MeshDeadLetters",
    "Page",
    "ReplayResult",
    "ReplaySelection",
    "browse",
    "direct_publish",
    "find",
    "format_cursor",
    "parse_cursor",
    "parse_time",
    "replay",
    "stored_json",
    "undead",
]

log = logging.getLogger(__name__)

MAX_PAGE: Final = 1000
"""The most events one browse returns."""
MAX_REPLAY: Final = 10_000
"""The most dead letters one replay republishes."""
SCAN_LIMIT: Final = 100_000
"""The most events one replay or ``show`` looks at; a replay that stops here says
``more`` and the next call goes on past what was replayed."""
MAX_MEMORY_RECORDS: Final = 100_000
"""Replay records kept per connector, in its state or in memory (the oldest go first)."""
_PRUNE_AT_ONCE: Final = 256
"""Records deleted concurrently (the local store commits them together)."""
BUCKET: Final = "deadletter-replays"
"""The connector state bucket that records replayed dead letters."""
PREFIX: Final = "deadletter"
"""Extensions with this prefix are the mesh's dead-letter bookkeeping
(eventmesh.delivery.deadletter), removed on replay."""
_BATCH: Final = 100
"""Events republished per publish call."""

StoredEvents: TypeAlias = list[StoredEvent]
Authorize: TypeAlias = Callable[[str], object]
"""Called with each topic a replay would publish to, before anything is published;
raises (``PermissionDeniedError``, or the mesh's refusal of the topic name) to refuse
the replay."""
Publish: TypeAlias = Callable[[str, Sequence[Event], Sequence[str]], Awaitable[Any]]
"""Republishes events to their original topic, with a key for each that names the
replay of one dead letter (see ``Connector.republish``)."""


class Page(NamedTuple):
    """One page of a browse: the events, and the cursor to pass as ``after`` for the
    next page (None when nothing was read and no cursor given)."""

    events: StoredEvents
    next: str | None


class ReplaySelection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which dead letters a replay takes (the JSON body of ``POST
    /deadletters/{topic}/replay``); every given criterion must hold."""

    since: datetime | None = None
    """Dead-lettered at or after this time (RFC 3339, with its offset)."""
    until: datetime | None = None
    """Dead-lettered before this time."""
    reason: str | None = None
    """The ``deadletterreason``: failed, expired, filter or transform."""
    subscription: str | None = None
    """The ``deadlettergroup``: the consumer group of the subscription that gave up."""
    limit: int = 1000
    """Replay at most this many (1 to MAX_REPLAY); already replayed ones do not count."""
    dry_run: bool = False
    """Select and count, publish and record nothing."""

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(
                    f"{name} needs a time zone: write it as RFC 3339, such as "
                    "'2026-12-07T05:00:00Z'"
                )
        if not 1 <= self.limit <= MAX_REPLAY:
            raise ValueError(f"limit must be from 1 to {MAX_REPLAY}, got {self.limit}")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError("until must be later than since")


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay did (or, with ``dry_run``, would do)."""

    selected: int
    """Dead letters that matched the selection."""
    replayed: int
    """Of those, republished now (with ``dry_run``: would be)."""
    skipped: int
    """Of those, skipped as replayed before."""
    unroutable: int
    """Of those, not republished: no ``deadlettertopic`` says where they came from."""
    dry_run: bool
    more: bool
    """The replay stopped at ``limit`` or at SCAN_LIMIT events looked at: call it again."""
    ids: list[str]
    """The ids of the events republished (or that would be), in order."""
    skipped_ids: list[str]


class DeadLetters(abc.ABC):
    """A dead-letter topic to look at and replay, from ``client.dead_letters(topic)``:
    the same calls embedded (on the Mesh) and remote (over the sidecar's HTTP API)."""

    topic: str

    @abc.abstractmethod
    async def list(
        self,
        *,
        since: datetime | None = None,
        after: str | Mapping[int, int] | None = None,
        limit: int = 100,
    ) -> Page:
        """Up to ``limit`` (at most MAX_PAGE) retained events stored at or after
        ``since``, after the cursor ``after`` (a page's ``next``). Raises
        ``RejectedError`` when the topic's connector cannot browse."""

    @abc.abstractmethod
    async def show(self, id: str) -> StoredEvents:
        """Every retained event with this id (usually one), oldest first, among the
        first SCAN_LIMIT; ``NotFoundError`` when there is none."""

    @abc.abstractmethod
    async def replay(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        reason: str | None = None,
        subscription: str | None = None,
        limit: int = 1000,
        dry_run: bool = False,
    ) -> ReplayResult:
        """Republish the selected dead letters to their original topics (module
        docstring); raises ``ConfigError`` for a bad selection."""


class BlockingDeadLetters:
    """:class:`DeadLetters` for ``connect_blocking()``: each call waits on ``portal``."""

    def __init__(self, portal: BlockingPortal, dead: DeadLetters) -> None:
        self._portal = portal
        self._dead = dead
        self.topic = dead.topic

    def list(self, **options: Any) -> Page:
        """As :meth:`DeadLetters.list`."""
        return self._portal.call(partial(self._dead.list, **options))

    def show(self, id: str) -> StoredEvents:
        """As :meth:`DeadLetters.show`."""
        return self._portal.call(self._dead.show, id)

    def replay(self, **options: Any) -> ReplayResult:
        """As :meth:`DeadLetters.replay`."""
        return self._portal.call(partial(self._dead.replay, **options))


def selection(**fields: Any) -> ReplaySelection:
    """A :class:`ReplaySelection`, or ``ConfigError`` naming what is wrong with it."""
    try:
        return ReplaySelection(**fields)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"replay: {exc}") from None


class MeshDeadLetters(DeadLetters):
    """:class:`DeadLetters` on a Mesh in this process (``mesh.dead_letters(topic)``)."""

    def __init__(self, mesh: Mesh, topic: str) -> None:
        self._mesh = mesh
        self.topic = topic

    def __repr__(self) -> str:
        return f"<MeshDeadLetters {self.topic!r}>"

    def _connector(self) -> Connector:
        self._mesh._check_open()
        return self._mesh.connector(self.topic, admit=False)

    async def list(
        self,
        *,
        since: datetime | None = None,
        after: str | Mapping[int, int] | None = None,
        limit: int = 100,
    ) -> Page:
        return await browse(self._connector(), self.topic, since=since, after=after, limit=limit)

    async def show(self, id: str) -> StoredEvents:
        return await find(self._connector(), self.topic, id)

    async def replay(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        reason: str | None = None,
        subscription: str | None = None,
        limit: int = 1000,
        dry_run: bool = False,
    ) -> ReplayResult:
        chosen = selection(
            since=since,
            until=until,
            reason=reason,
            subscription=subscription,
            limit=limit,
            dry_run=dry_run,
        )
        mesh = self._mesh
        return await replay(
            self._connector(),
            self.topic,
            chosen,
            publish=direct_publish(mesh),
            authorize=mesh.connector,  # a topic the mesh refuses fails before any publish
        )


def direct_publish(mesh: Mesh) -> Publish:
    """Store events through their topic's connector (``Connector.republish``), past the
    mesh's ``dedupe`` window and the backend's own de-duplication: a replay is a
    deliberate second delivery of the same event, not a producer's retry."""

    async def publish(topic: str, events: Sequence[Event], keys: Sequence[str]) -> None:
        await mesh.connector(topic).republish(topic, events, keys)

    return publish


# -- cursors and times ---------------------------------------------------------------------


def format_cursor(after: Mapping[int, int]) -> str:
    """``{0: 12, 3: 7}`` as ``"0:12,3:7"``."""
    return ",".join(f"{p}:{o}" for p, o in sorted(after.items()))


def parse_cursor(text: str | Mapping[int, int] | None, *, key: str = "after") -> dict[int, int]:
    """A cursor as :func:`format_cursor` writes it (or a mapping), checked; ConfigError
    naming ``key`` otherwise."""
    if text is None:
        return {}
    items: list[tuple[Any, Any]] = []
    if isinstance(text, Mapping):
        items = list(text.items())
    else:
        for part in filter(None, text.split(",")):
            first, sep, second = part.partition(":")
            try:
                items.append((int(first), int(second)))
            except ValueError:
                sep = ""
            if not sep:
                raise ConfigError(
                    f"a cursor is 'partition:offset,...' as a page's 'next' gives it, got "
                    f"{text[:80]!r}",
                    key=key,
                )
    out: dict[int, int] = {}
    for p, o in items:
        if not isinstance(p, int) or not isinstance(o, int) or p < 0 or o < -1:
            raise ConfigError(f"a cursor's partitions and offsets are >= 0, got {p}:{o}", key=key)
        out[p] = o
    return out


def parse_time(text: str, *, key: str) -> datetime:
    """An RFC 3339 time with its offset (``2026-12-07T05:00:00Z``); ConfigError naming
    ``key`` otherwise."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise ConfigError(
            f"must be an RFC 3339 time with its offset, such as '2026-12-07T05:00:00Z', "
            f"got {text[:60]!r}",
            key=key,
        )
    return value


def _timestamp(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


def stored_json(stored: StoredEvent) -> dict[str, Any]:
    """A stored event as the HTTP API writes it: position, store time (RFC 3339) and
    the event in the JSON format."""
    return {
        "partition": stored.partition,
        "offset": stored.offset,
        "timestamp": _timestamp(stored.timestamp),
        "event": msgspec.Raw(encode_json(stored.event)),
    }


# -- browsing ------------------------------------------------------------------------------


async def browse(
    connector: Connector,
    topic: str,
    *,
    since: datetime | None = None,
    after: str | Mapping[int, int] | None = None,
    limit: int = 100,
) -> Page:
    """One page of ``topic`` (see :class:`DeadLetters.list`)."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ConfigError(f"must be an integer from 1 to {MAX_PAGE}, got {limit!r}", key="limit")
    if since is not None and since.tzinfo is None:
        raise ConfigError("needs a time zone, such as '2026-12-07T05:00:00Z'", key="since")
    cursor = parse_cursor(after)
    events = await connector.read(topic, since=since, after=cursor or None, limit=limit)
    for stored in events:
        if stored.offset > cursor.get(stored.partition, -1):
            cursor[stored.partition] = stored.offset
    return Page(events, format_cursor(cursor) if cursor else None)


class _Scanner:
    """Reads a topic page by page from ``since`` (or its oldest event), at most
    SCAN_LIMIT events in all."""

    def __init__(self, connector: Connector, topic: str, since: datetime | None) -> None:
        self.connector = connector
        self.topic = topic
        self.since = since
        self.cursor: dict[int, int] = {}
        self.scanned = 0

    @property
    def exhausted(self) -> bool:
        return self.scanned >= SCAN_LIMIT

    async def page(self) -> StoredEvents:
        """The next events, or [] at the end (or at SCAN_LIMIT)."""
        if self.exhausted:
            return []
        events = await self.connector.read(
            self.topic,
            since=self.since,
            after=self.cursor or None,
            limit=min(MAX_PAGE, SCAN_LIMIT - self.scanned),
        )
        cursor = self.cursor
        for stored in events:
            if stored.offset > cursor.get(stored.partition, -1):
                cursor[stored.partition] = stored.offset
        self.scanned += len(events)
        return events


async def find(connector: Connector, topic: str, id: str) -> StoredEvents:
    """Every retained event of ``topic`` with this id among the first SCAN_LIMIT;
    ``NotFoundError`` when there is none."""
    if not isinstance(id, str) or not id:
        raise ConfigError(f"an event id is a non-empty string, got {id!r}", key="id")
    scanner = _Scanner(connector, topic, None)
    found: StoredEvents = []
    while events := await scanner.page():
        found.extend(s for s in events if s.event.id == id)
    if not found:
        where = f"the first {SCAN_LIMIT} events" if scanner.exhausted else "the events"
        raise NotFoundError(
            f"no event with id {id!r} among {where} retained on topic {topic!r}; list "
            "them with 'eventmesh dlq list' (or GET /topics/{topic}/events)"
        )
    return found


# -- replaying -----------------------------------------------------------------------------


def undead(event: Event) -> Event:
    """``event`` without the ``deadletter*`` extensions the mesh added to it."""
    extensions = {k: v for k, v in event.extensions.items() if not k.startswith(PREFIX)}
    return event.replace(extensions=extensions)


class _Records:
    """The replayed dead letters of one connector: in its state store, or in memory."""

    def __init__(self, store: StateStore | None) -> None:
        self.store = store
        self.memory: dict[str, bytes] = {}
        self.lock = anyio.Lock()

    async def load(self) -> dict[str, bytes]:
        if self.store is not None:
            return await self.store.load()
        return dict(self.memory)

    async def put(self, key: str, value: bytes) -> None:
        if self.store is not None:
            await self.store.put(key, value)
            return
        memory = self.memory
        memory[key] = value
        while len(memory) > MAX_MEMORY_RECORDS:
            del memory[next(iter(memory))]

    async def delete(self, keys: Sequence[str]) -> None:
        """Forget these records; one the store fails to delete is logged, not raised
        (the replay they tidy up after is done; the next one tries again)."""
        store = self.store
        if store is None:
            for key in keys:
                self.memory.pop(key, None)
            return
        failed: list[EventMeshError] = []

        async def delete(key: str) -> None:
            try:
                await store.delete(key)
            except EventMeshError as exc:
                failed.append(exc)

        for start in range(0, len(keys), _PRUNE_AT_ONCE):
            async with anyio.create_task_group() as tg:
                for key in keys[start : start + _PRUNE_AT_ONCE]:
                    tg.start_soon(delete, key)
        if failed:
            log.warning(
                "dead-letter replay: %d of %d old replay records could not be deleted (the "
                "next replay tries again): %s",
                len(failed),
                len(keys),
                failed[0],
            )


def _gone(records: Mapping[str, bytes], topic: str, first: Mapping[int, int]) -> list[str]:
    """The records of ``topic``'s dead letters that retention removed: those below
    ``first``, the first offset a scan from the topic's oldest event saw in each
    partition (a page holds each partition's events with no gap, so nothing below it
    is retained). A partition the scan saw nothing of tells nothing: a broker's read
    may have returned early."""
    prefix = _prefix(topic)
    out = []
    for key in records:
        if not key.startswith(prefix):
            continue
        partition, _, offset = key[len(prefix) :].partition(".")
        try:
            p, o = int(partition), int(offset)
        except ValueError:  # not a record this module wrote
            continue
        if p in first and o < first[p]:
            out.append(key)
    return out


def _oldest(records: Mapping[str, bytes], keep: int) -> list[str]:
    """The records past the newest ``keep``, by the time each was written."""

    def written(key: str) -> float:
        try:
            at = msgspec.json.decode(records[key]).get("at")
        except (msgspec.DecodeError, AttributeError):
            return 0.0
        return at if isinstance(at, int | float) else 0.0

    if len(records) <= keep:
        return []
    return sorted(records, key=written)[: len(records) - keep]


_RECORDS: weakref.WeakKeyDictionary[Connector, _Records] = weakref.WeakKeyDictionary()


def _records(connector: Connector) -> _Records:
    records = _RECORDS.get(connector)
    if records is None:
        records = _RECORDS[connector] = _Records(connector.state(BUCKET))
    return records


def _prefix(topic: str) -> str:
    """The start of the record keys of ``topic``'s dead letters: its name in base64url,
    which has no ".", and a "."."""
    return base64.urlsafe_b64encode(topic.encode()).rstrip(b"=").decode() + "."


def _key(topic: str, stored: StoredEvent) -> str:
    """The record key of a dead letter: its topic (base64url) and position."""
    return f"{_prefix(topic)}{stored.partition}.{stored.offset}"


async def replay(
    connector: Connector,
    topic: str,
    chosen: ReplaySelection,
    *,
    publish: Publish,
    authorize: Authorize | None = None,
) -> ReplayResult:
    """Replay the dead letters of ``topic`` that ``chosen`` selects (module docstring),
    publishing with ``publish``; ``authorize`` sees each original topic first. Replays
    of one connector's dead letters in this process run one at a time."""
    records = _records(connector)
    async with records.lock:
        kept = await records.load()
        done = set(kept)
        scanner = _Scanner(connector, topic, chosen.since)
        first: dict[int, int] = {}  # the first offset seen per partition
        until = None if chosen.until is None else chosen.until.timestamp()
        todo: list[tuple[str, str, StoredEvent]] = []
        skipped: list[str] = []
        selected = unroutable = 0
        more = False
        while not more and (events := await scanner.page()):
            for stored in events:
                first.setdefault(stored.partition, stored.offset)
                ext = stored.event.extensions
                if until is not None and stored.timestamp is not None and stored.timestamp >= until:
                    continue
                if chosen.reason is not None and ext.get("deadletterreason") != chosen.reason:
                    continue
                group = ext.get("deadlettergroup")
                if chosen.subscription is not None and group != chosen.subscription:
                    continue
                if len(todo) >= chosen.limit:
                    more = True
                    break
                selected += 1
                origin = ext.get("deadlettertopic")
                if not isinstance(origin, str) or not origin:
                    unroutable += 1
                    continue
                key = _key(topic, stored)
                if key in done:
                    skipped.append(stored.event.id)
                    continue
                done.add(key)  # a copy listed twice in one scan is replayed once
                todo.append((origin, key, stored))
        more = more or scanner.exhausted
        for origin in dict.fromkeys(origin for origin, _, _ in todo):
            if authorize is not None:
                authorize(origin)
        if not chosen.dry_run:
            await _republish(records, todo, publish)
            # Housekeeping of the records: those of dead letters retention removed (known
            # only from a scan that began at the topic's oldest event), then the oldest
            # past MAX_MEMORY_RECORDS, so that they do not grow for ever.
            gone = _gone(kept, topic, first) if chosen.since is None else []
            for key in gone:
                del kept[key]
            oldest = []  # in memory, put() keeps the newest
            if records.store is not None:
                oldest = _oldest(kept, max(0, MAX_MEMORY_RECORDS - len(todo)))
            await records.delete(gone + oldest)
    return ReplayResult(
        selected=selected,
        replayed=len(todo),
        skipped=len(skipped),
        unroutable=unroutable,
        dry_run=chosen.dry_run,
        more=more,
        ids=[stored.event.id for _, _, stored in todo],
        skipped_ids=skipped,
    )


async def _republish(
    records: _Records, todo: list[tuple[str, str, StoredEvent]], publish: Publish
) -> None:
    """Publish in batches per original topic (each topic's events in their order), and
    record each batch once it is stored."""
    by_origin: dict[str, list[tuple[str, StoredEvent]]] = {}
    for origin, key, stored in todo:
        by_origin.setdefault(origin, []).append((key, stored))
    for origin, items in by_origin.items():
        for start in range(0, len(items), _BATCH):
            batch = items[start : start + _BATCH]
            events = [undead(stored.event) for _, stored in batch]
            # The record key names a position, which a topic can hold twice (a memory
            # topic after a restart, one in each replica, a topic made again); with the
            # time it was stored it names one dead letter, and a retry the same one.
            keys = [f"{key}@{stored.timestamp!r}" for key, stored in batch]
            await publish(origin, events, keys)
            now = time.time()
            for key, stored in batch:
                record = {"id": stored.event.id, "topic": origin, "at": now}
                await records.put(key, msgspec.json.encode(record))
