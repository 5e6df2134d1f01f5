"""The local connector (``type: local``): a durable log on this machine, in SQLite.

Events, consumer-group positions and the mesh's own state live in one SQLite file in
WAL mode, held by one process at a time; topics are partitioned and groups commit
positions as the memory connector does, and all of it survives a restart. Every SQLite
call runs off the event loop: one writer thread commits the publishes waiting together
in one transaction (group commit), reads run in worker threads. See
docs/configuration.md, 'The local connector (type: local)', for the ``fsync`` modes
and retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from eventmesh.connectors import _local_jobs, _local_read, _sqlite
from eventmesh.connectors._local_config import LocalConfig, check_text, decode, partition_of
from eventmesh.connectors._local_group import (
    Append,
    Group,
    LocalConsumer,
    LocalDelivery,
    Part,
    Topic,
)
from eventmesh.connectors._local_state import LocalState, Watch
from eventmesh.connectors.base import (
    Capabilities,
    Connector,
    Consumer,
    Delivery,
    StartPosition,
    StateStore,
    StoredEvent,
)
from eventmesh.connectors.browse import check_read
from eventmesh.errors import (
    ClosedError,
    ConnectError,
    PublishError,
    RejectedError,
    SubscribeError,
)
from eventmesh.event import Event

__all__ = ["DEFAULT_DATA_DIR", "LocalConfig", "LocalConnector", "LocalConsumer"]

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "eventmesh-data"
_CAPABILITIES = Capabilities(
    durable=True, ordered_by_key=True, replay=True, consumer_groups=True, redelivery=True
)
_T = TypeVar("_T")
_FLUSH_EVERY = 0.01
"""Seconds between saves of the groups' positions while acks come in."""
_DB_FILE = "events.db"
_LOCK_FILE = "LOCK"
_DAMAGED = "restore it from a backup, or move the directory aside to start empty"
"""What to do about a store file that cannot be read back."""


# -- the connector ----------------------------------------------------------------------


def _lock(fd: int) -> None:
    """Hold the data directory for this process; BlockingIOError when another does. The
    operating system lets go when the file is closed or the process dies."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(str(exc)) from exc
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class _InUseError(Exception):
    """Another process (or connector) holds the data directory's lock."""


class LocalConnector(Connector):
    """The durable connector on this machine (``type: local``); see the module docs."""

    Config = LocalConfig
    config: LocalConfig

    def __init__(self, config: LocalConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name or "local")
        self.path = Path(self.config.data_dir or DEFAULT_DATA_DIR)
        self._topics: dict[str, Topic] = {}
        self._consumers: set[LocalConsumer] = set()
        self._watchers: dict[str, set[Watch]] = {}
        self._dirty: set[Group] = set()
        self._flush_scheduled = False
        self._join_lock = anyio.Lock()
        self._cache_per_part = max(16, self.config.cache_events // self.config.partitions)
        self._lock_fd: int | None = None
        self._writer: _sqlite.Writer | None = None
        self._reader: _sqlite.Reader | None = None

    @property
    def capabilities(self) -> Capabilities:
        return _CAPABILITIES

    # -- lifecycle ---------------------------------------------------------------------

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loaded = await anyio.to_thread.run_sync(self._open_files)
        except _InUseError as exc:
            raise ConnectError(
                f"the local store in {str(self.path)!r} is in use by another process or "
                f"connector (pid {exc}); close it first, or give this one another data_dir"
            ) from None
        except _sqlite.LayoutError as exc:
            self._release_files()
            raise ConnectError(
                f"cannot open the local store in {str(self.path)!r}: {exc}"
            ) from None
        except (OSError, sqlite3.Error) as exc:
            self._release_files()
            damaged = isinstance(exc, sqlite3.DatabaseError) and any(
                words in str(exc) for words in ("malformed", "not a database")
            )
            advice = (
                f"its file is damaged: {_DAMAGED}"
                if damaged
                else "check that the directory is writable and not on a network file system"
            )
            raise ConnectError(
                f"cannot open the local store in {str(self.path)!r}: {exc}; {advice}"
            ) from exc
        db, topics, positions = loaded
        config = self.config
        writer = self._writer = _sqlite.Writer(
            db,
            fsync=config.fsync,
            interval=config.fsync_interval,
            max_batch=config.max_batch,
            loop=loop,
            finish=self._finish,
            max_bytes=config.max_bytes,
            max_age=config.max_age,
            released=self._released,
        )
        for tid, name, count, rows in topics:
            writer.partitions[tid] = count
            parts = []
            for p, first, nxt, size in rows:
                writer.next[(tid, p)], writer.first[(tid, p)] = nxt, first
                writer.bytes[(tid, p)] = size
                parts.append(Part(first, nxt))
            self._topics[name] = Topic(tid, name, parts)
        by_id = {t.tid: t for t in self._topics.values()}
        for (tid, grp), committed in positions.items():
            t = by_id.get(tid)
            if t is not None:
                marks = [max(c, part.first) for c, part in zip(committed, t.parts, strict=False)]
                t.groups[grp] = Group(t, grp, marks, self)
        writer.start()
        log.info(
            "local store open in %s (%d topics, fsync %s)", self.path, len(topics), config.fsync
        )

    def _open_files(self) -> tuple[sqlite3.Connection, list[Any], dict[tuple[int, str], list[int]]]:
        _private_dir(self.path)
        fd = os.open(self.path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _lock(fd)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise _InUseError(holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        # SQLite creates a file readable by all (0644, less the umask) and gives its
        # -wal and -shm files the database's mode: made here first, all three are 0600.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path / _DB_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = _sqlite.open_db(str(self.path / _DB_FILE), self.config.fsync)
        try:
            topics = []
            for tid, name, n in db.execute("SELECT id, name, partitions FROM topics ORDER BY id"):
                rows = db.execute(
                    "SELECT part, first, next, bytes FROM partitions WHERE topic = ? ORDER BY part",
                    (tid,),
                ).fetchall()
                topics.append((tid, name, n, rows))
            positions: dict[tuple[int, str], list[int]] = {}
            for tid, grp, _p, committed in db.execute(
                "SELECT topic, grp, part, committed FROM positions ORDER BY topic, grp, part"
            ):
                positions.setdefault((tid, grp), []).append(committed)
            self._reader = _sqlite.Reader(
                _sqlite.open_db(str(self.path / _DB_FILE), "batch", readonly=True), decode
            )
        except BaseException:
            db.close()
            raise
        return db, topics, positions

    @staticmethod
    def _stop_writer(writer: _sqlite.Writer) -> None:
        writer.stop()
        with contextlib.suppress(sqlite3.Error):
            writer.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a short log for the next open
        writer.db.close()

    def _release_files(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the file releases the lock
            self._lock_fd = None

    async def _close(self) -> None:
        # Shielded: a close made in a cancelled scope (a task group shutting down, a
        # timeout) must still stop the writer thread, which is no daemon and would hold
        # the process at exit, and release the directory's lock.
        with anyio.CancelScope(shield=True):
            for consumer in list(self._consumers):
                await consumer.close()
            self._flush_positions()
            writer = self._writer
            if writer is not None:
                await anyio.to_thread.run_sync(self._stop_writer, writer)
                # Reports queued by the writer's last batches run before the loop goes on.
                await anyio.lowlevel.checkpoint()
            await anyio.to_thread.run_sync(self._release_files)
        for watchers in self._watchers.values():
            for watch in watchers:
                watch.wakeup.set()

    async def health(self) -> bool:
        return self.is_open and self._writer is not None and self._writer.alive

    # -- the writer's reports (on the loop) ----------------------------------------------

    async def _submit(self, job: _sqlite.Job) -> Any:
        writer = self._writer
        assert writer is not None
        job.future = asyncio.get_running_loop().create_future()
        try:
            writer.submit(job)
        except RuntimeError:
            raise ClosedError(f"connector {self.name!r} is closed") from None
        return await job.future

    def _finish(
        self, batch: list[_sqlite.Job], results: list[Any], error: BaseException | None
    ) -> None:
        if error is not None and not isinstance(error, RejectedError):
            error = PublishError(f"the local store in {str(self.path)!r} failed to write: {error}")
        for i, job in enumerate(batch):
            job.finish(results[i] if error is None else None, error)

    def _released(self, released: list[tuple[int, int, int, int]]) -> None:
        by_id = {t.tid: t for t in self._topics.values()}
        for tid, p, cut, count in released:
            t = by_id.get(tid)
            if t is None:
                continue
            # Count only what some group had not committed yet, as the memory connector
            # does: retention of events every group read is not a release.
            low = min((group.committed[p] for group in t.groups.values()), default=cut)
            t.released += max(0, cut - max(t.parts[p].first, low))
            t.parts[p].first = max(t.parts[p].first, cut)
            for group in t.groups.values():
                group.skip_to(p, cut)
            log.debug("topic %r[%d]: retention deleted %d events", t.name, p, count)

    # -- positions -----------------------------------------------------------------------

    def positions_changed(self, group: Group) -> None:
        """A group's commit moved: save it with the writer's next batch."""
        self._dirty.add(group)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(_FLUSH_EVERY, self._flush_positions)

    def _flush_positions(self) -> None:
        self._flush_scheduled = False
        if not self._dirty or self._writer is None:
            return
        rows = [row for group in self._dirty for row in group.rows()]
        self._dirty.clear()
        with contextlib.suppress(RuntimeError):  # the writer stopped: closing
            self._writer.submit(_local_jobs.Sql(_local_jobs.SAVE_POSITIONS, rows, lazy=True))

    async def _save_group(self, group: Group) -> None:
        self._dirty.discard(group)
        if self._writer is not None:
            with contextlib.suppress(ClosedError):
                await self._submit(_local_jobs.Sql(_local_jobs.SAVE_POSITIONS, group.rows()))

    # -- topics, groups, reads -----------------------------------------------------------

    def check_topic(self, topic: str) -> None:
        super().check_topic(topic)
        check_text("topic name", topic, RejectedError)

    async def _topic(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            self.check_topic(name)
            # Checked here first, so that a publish to a new topic is refused without
            # reaching the writer; topics created meanwhile are refused by the writer,
            # each alone (NewTopic answers with the error, failing no other job).
            if len(self._topics) >= _sqlite.MAX_TOPICS:
                raise self._too_many_topics(len(self._topics))
            found = await self._submit(_local_jobs.NewTopic(name, self.config.partitions))
            if isinstance(found, _local_jobs.TooManyTopicsError):
                raise self._too_many_topics(found.count)
            tid, n = found
            topic = self._topics.get(name)
            if topic is None:
                topic = self._topics[name] = Topic(tid, name, [Part(0, 0) for _ in range(n)])
        return topic

    def _too_many_topics(self, count: int) -> RejectedError:
        return RejectedError(
            f"the local store in {str(self.path)!r} holds {count} topics, the most it can "
            "number, and it never removes a topic: publish to a topic it holds, or send new "
            "topics to another connector (topics.<name>.connector, or default_connector, "
            "naming a connector with another data_dir)"
        )

    async def _join(self, consumer: LocalConsumer) -> Group:
        self._check_open()
        if not isinstance(consumer.group, str) or not consumer.group:
            raise SubscribeError(f"group must be a non-empty string, got {consumer.group!r}")
        topic = await self._topic(consumer.topic)
        async with self._join_lock:
            group = topic.groups.get(consumer.group)
            if group is None:
                start = await self._start_offsets(topic, consumer._start_at)
                group = Group(topic, consumer.group, start, self)
                await self._submit(_local_jobs.Sql(_local_jobs.SAVE_POSITIONS, group.rows()))
                topic.groups[consumer.group] = group
        group.join(consumer)
        self._consumers.add(consumer)
        return group

    async def _start_offsets(self, topic: Topic, start: StartPosition) -> list[int]:
        if start == "latest":
            return [part.end for part in topic.parts]
        if start == "earliest":
            return [part.first for part in topic.parts]
        if isinstance(start, datetime):
            stamp = start.timestamp()
            reader = self._reader
            assert reader is not None
            return [
                await self._read(reader.first_at, topic.tid, p, part.first, part.end, stamp)
                for p, part in enumerate(topic.parts)
            ]
        raise SubscribeError(f"start must be 'earliest', 'latest' or a datetime, got {start!r}")

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except sqlite3.Error as exc:
            raise SubscribeError(
                f"cannot read the local store in {str(self.path)!r}: {exc}"
            ) from exc
        except (msgspec.DecodeError, ValueError) as exc:
            raise SubscribeError(
                f"a stored batch in the local store in {str(self.path)!r} cannot be read "
                f"back ({exc}): the file is damaged; {_DAMAGED}"
            ) from exc

    def _reader_state(self, bucket: str) -> dict[str, bytes]:
        assert self._reader is not None
        return self._reader.state(bucket)

    async def _deliveries(self, group: Group, plan: list[tuple[int, int]]) -> list[Delivery]:
        """Deliveries for planned (partition, offset) pairs, in plan order: from the
        partitions' tails, and what they no longer hold from disk, in a worker thread."""
        topic = group.topic
        parts = topic.parts
        found: dict[tuple[int, int], tuple[Event, float]] = {}
        wanted: dict[int, list[int]] = {}
        for p, offset in plan:
            part = parts[p]
            i = offset - part.base
            if 0 <= i < len(part.events):
                found[(p, offset)] = (part.events[i], part.stamps[i])
            else:
                wanted.setdefault(p, []).append(offset)
        if wanted:
            found.update(await self._read(_local_read.load, self._reader, topic.tid, wanted))
        name = topic.name
        attempts = group.attempts
        out: list[Delivery] = []
        for p, offset in plan:
            hit = found.get((p, offset))
            if hit is None:  # deleted by retention meanwhile: nothing to deliver
                group.ack(p, offset)
                continue
            event, stamp = hit
            out.append(
                LocalDelivery(
                    group,
                    event,
                    topic=name,
                    partition=p,
                    offset=offset,
                    key=event.partitionkey,
                    attempt=attempts.get((p, offset), 0) + 1 if attempts else 1,
                    timestamp=stamp,
                )
            )
        return out

    # -- the contract --------------------------------------------------------------------

    async def publish(self, topic: str, events: Sequence[Event]) -> None:
        self._check_open()
        t = self._topics.get(topic) or await self._topic(topic)
        if not events:
            return
        n = len(t.parts)
        cache = t.key_parts
        if len(cache) > 65_536:  # many distinct keys: start again rather than grow
            cache.clear()
        parts = []
        for event in events:
            key = event.extensions.get("partitionkey") if event.extensions else None
            if key is None:
                parts.append(next(t.round_robin))
            else:
                p = cache.get(key)
                if p is None:
                    p = cache[key] = partition_of(key, n)
                parts.append(p)
        cap_bytes = self.config.cache_bytes // n
        await self._submit(Append(self._cache_per_part, cap_bytes, t, events, parts))

    def subscribe(self, topic: str, group: str, *, start: StartPosition = "latest") -> Consumer:
        self._check_open()
        self.check_topic(topic)
        if not isinstance(group, str) or not group:
            raise SubscribeError(f"group must be a non-empty string, got {group!r}")
        check_text("group name", group, SubscribeError)
        return LocalConsumer(self, topic, group, start)

    async def read(
        self,
        topic: str,
        *,
        since: datetime | None = None,
        after: Mapping[int, int] | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        self._check_open()
        self.check_topic(topic)
        limit = check_read(topic, limit, after)
        t = self._topics.get(topic)
        if t is None:
            return []
        after = after or {}
        ranges = [
            (p, max(part.first, after[p] + 1 if p in after else 0), part.end)
            for p, part in enumerate(t.parts)
        ]
        stamp = None if since is None else since.timestamp()
        rows = await self._read(_local_read.browse, self._reader, t.tid, ranges, stamp, limit)
        return [StoredEvent(event, p, offset, s) for s, p, offset, event in rows]

    def state(self, bucket: str) -> StateStore | None:
        self._check_open()
        if not isinstance(bucket, str) or not bucket:
            raise RejectedError(f"a state bucket name must be a non-empty string, got {bucket!r}")
        check_text("state bucket name", bucket, RejectedError)
        return LocalState(self, bucket)

    def _notify(self, bucket: str, key: str, value: bytes | None) -> None:
        for watch in self._watchers.get(bucket, ()):
            watch.changes.pop(key, None)
            watch.changes[key] = value
            watch.wakeup.set()

    def released(self) -> dict[str, int]:
        """Events retention deleted before every group had committed them, per topic
        that deleted any, since open."""
        return {name: t.released for name, t in self._topics.items() if t.released}

    async def delete_group(self, topic: str, group: str) -> bool:
        """Forget consumer ``group`` on ``topic`` and its saved positions (as the memory
        connector's :meth:`~eventmesh.connectors.memory.MemoryConnector.delete_group`).

        Returns False when the topic has no such group. Raises ``SubscribeError`` while
        the group has members: close them first.
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
        del t.groups[group]
        g.deleted = True  # a late ack of a delivery it handed out must not save it again
        self._dirty.discard(g)
        await self._submit(_local_jobs.Sql(_local_jobs.DELETE_GROUP, [(t.tid, group)]))
        log.info("group %r on topic %r deleted", group, topic)
        return True


def _private_dir(path: Path) -> None:
    """Create the data directory readable by this user only (it holds the stored
    subscriptions' webhook headers and secrets); warn when one that exists is not."""
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        if sys.platform == "win32":  # modes are not how Windows grants access
            return
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning(
                "the local store's data directory %s can be read by other users (mode "
                "%o), and it holds the stored subscriptions' webhook headers and secrets: "
                "make it private with 'chmod 700 %s'",
                path,
                mode,
                path,
            )
