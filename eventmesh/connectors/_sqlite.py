"""The local connector's SQLite file: its schema, the one writer thread, and the reads.

Everything here is synchronous and runs off the event loop: the :class:`Writer` in its
own thread, the :class:`Reader` in worker threads. The loop side (``local.py``) hands
jobs to the writer and awaits their futures.

Events are stored as Kafka stores them, in batches: the events one publish call put in
one partition are one row of ``batches`` (a MessagePack array, ``count`` events from the
row's first offset), so a row costs SQLite the same for 1 event or 1,000. A row is keyed
by one integer that packs where its first event is stored: ``topic << 48 | partition <<
40 | offset`` (so at most 32,767 topics of at most 256 partitions, and 2**40 events per
partition); a partition is then one range of SQLite's fastest index, the rowid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

__all__ = [
    "MAX_PARTITIONS",
    "MAX_TOPICS",
    "Job",
    "LayoutError",
    "Reader",
    "Writer",
    "open_db",
    "row_id",
]

log = logging.getLogger(__name__)

MAX_TOPICS = (1 << 15) - 1
MAX_PARTITIONS = 1 << 8
_PARTITION_SHIFT = 40
_TOPIC_SHIFT = 48
_OFFSET_MASK = (1 << _PARTITION_SHIFT) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    topic INTEGER NOT NULL, part INTEGER NOT NULL, first INTEGER NOT NULL,
    next INTEGER NOT NULL, bytes INTEGER NOT NULL, released INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY, stamp REAL NOT NULL, count INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS positions (
    topic INTEGER NOT NULL, grp TEXT NOT NULL, part INTEGER NOT NULL,
    committed INTEGER NOT NULL, PRIMARY KEY (topic, grp, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    bucket TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (bucket, key)) WITHOUT ROWID;
"""

FsyncMode = Literal["always", "batch", "interval"]
LAYOUT = 1
"""The file's layout (``PRAGMA user_version``), raised with every change to the tables."""


def row_id(topic: int, partition: int, offset: int) -> int:
    """The ``events.id`` of an event: where it is stored, packed into one integer."""
    return topic << _TOPIC_SHIFT | partition << _PARTITION_SHIFT | offset


def open_db(path: str, fsync: FsyncMode, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the store at ``path`` in WAL mode, the schema created."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout = 10000")
    if readonly:
        db.execute("PRAGMA query_only = 1")
        return db
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        db.close()
        raise sqlite3.OperationalError(f"the file system refused WAL mode (got {mode!r})")
    # FULL: each commit fsyncs the log before it returns. NORMAL: the log is fsynced at
    # checkpoints only, which the writer runs every fsync_interval.
    db.execute(f"PRAGMA synchronous = {'NORMAL' if fsync == 'interval' else 'FULL'}")
    db.execute("PRAGMA cache_size = -32768")  # 32 MiB of pages
    db.execute("PRAGMA wal_autocheckpoint = 8192")  # checkpoint (and fsync the file) per 32 MiB
    try:
        _check_layout(db)
    except BaseException:
        db.close()
        raise
    return db


class LayoutError(Exception):
    """The file was made by an eventmesh with other tables."""


def _check_layout(db: sqlite3.Connection) -> None:
    """Create the tables in a new file; refuse a file of another layout."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version == LAYOUT:
        return
    (tables,) = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
    if version != 0 or tables:
        raise LayoutError(
            f"the file has layout {version} and {tables} tables, and this eventmesh reads "
            f"layout {LAYOUT} only: move it aside (or point data_dir elsewhere) to start "
            "a new store"
        )
    db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {LAYOUT}; COMMIT;")


class Job:
    """One unit of work for the writer: :meth:`apply` runs in the writer's thread inside
    the batch's transaction; its result (or the batch's error) is handed to
    :meth:`finish` on the event loop, in submission order."""

    __slots__ = ("future", "size")

    lazy = False
    """True for a job whose loss in a power cut is harmless (a group position: the group
    gets some events again): a batch of only such jobs is committed without an fsync; the
    next commit that has one makes it durable too."""

    def __init__(self, size: int = 1) -> None:
        self.size = size
        self.future: asyncio.Future[Any] | None = None

    def apply(self, writer: Writer) -> Any:
        raise NotImplementedError

    def finish(self, result: Any, error: BaseException | None) -> None:
        """On the loop: resolve the future (subclasses also update the loop's view)."""
        future = self.future
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class Writer:
    """The one thread that writes: it takes every job waiting, applies them in one
    transaction, commits (one fsync under ``fsync: batch``), then reports each job's
    result to the loop. ``always`` commits each job alone."""

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        fsync: FsyncMode,
        interval: float,
        max_batch: int,
        loop: asyncio.AbstractEventLoop,
        finish: Callable[[list[Job], list[Any], BaseException | None], None],
        max_bytes: int | None,
        max_age: float | None,
        released: Callable[[list[tuple[int, int, int, int]]], None],
    ) -> None:
        self.db = db
        self.fsync = fsync
        self.interval = interval
        self.max_batch = max_batch
        self.loop = loop
        self._finish = finish
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._released = released
        self._maintain_every = 1.0 if max_age is None else min(1.0, max_age / 16)
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="eventmesh-local-writer")
        # Writer-owned bookkeeping, by (topic id, partition): next offset, bytes held,
        # first offset retained. Loaded at open; changed only in this thread afterwards.
        self.next: dict[tuple[int, int], int] = {}
        self.bytes: dict[tuple[int, int], int] = {}
        self.first: dict[tuple[int, int], int] = {}
        self.touched: set[tuple[int, int]] = set()
        self.partitions: dict[int, int] = {}  # topic id -> its partition count
        self.last_sync = self.last_maintained = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the writer has stopped")
            self._jobs.append(job)
            self._cond.notify()

    def stop(self) -> None:
        """Apply what is queued, then end the thread (blocks: call off the loop)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                wait = self._next_chore() - time.monotonic()
                if wait <= 0:
                    return []
                self._cond.wait(wait)
            if self.fsync == "always":
                return [self._jobs.popleft()]
            batch: list[Job] = []
            size = 0
            while self._jobs and size < self.max_batch:
                job = self._jobs.popleft()
                batch.append(job)
                size += job.size
            return batch

    def _next_chore(self) -> float:
        due = self.last_maintained + self._maintain_every
        if self.fsync == "interval":
            due = min(due, self.last_sync + self.interval)
        return due

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                break
            if batch:
                self._apply(batch)
            self._chores()
        self._chores(force=True)

    def _apply(self, batch: list[Job]) -> None:
        saved = (dict(self.next), dict(self.bytes), dict(self.first))
        results: list[Any] = []
        error: BaseException | None = None
        db = self.db
        lazy = self.fsync != "interval" and all(job.lazy for job in batch)
        try:
            if lazy:
                db.execute("PRAGMA synchronous = NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                for job in batch:
                    results.append(job.apply(self))
                self._save_partitions()
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except Exception as exc:
            self.next, self.bytes, self.first = saved
            self.touched.clear()
            log.error("local store: a write of %d jobs failed: %r", len(batch), exc)
            error = exc
        finally:
            if lazy:
                try:
                    db.execute("PRAGMA synchronous = FULL")
                except sqlite3.Error as exc:
                    log.error("local store: cannot restore synchronous=FULL: %r", exc)
        try:
            self.loop.call_soon_threadsafe(self._finish, batch, results, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _save_partitions(self) -> None:
        if not self.touched:
            return
        rows = [
            (self.first[key], self.next[key], self.bytes[key], key[0], key[1])
            for key in self.touched
        ]
        self.touched.clear()
        self.db.executemany(
            "UPDATE partitions SET first = ?, next = ?, bytes = ? WHERE topic = ? AND part = ?",
            rows,
        )

    def _chores(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self.last_maintained + self._maintain_every:
            self.last_maintained = now
            try:
                self.retain()
            except Exception as exc:
                log.error("local store: retention failed (will try again): %r", exc)
        if self.fsync == "interval" and (force or now >= self.last_sync + self.interval):
            self.last_sync = now
            try:
                # In WAL mode with synchronous=NORMAL a checkpoint is what fsyncs the log.
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.error("local store: the periodic fsync failed (will try again): %r", exc)

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    # -- helpers for jobs (writer thread only) -------------------------------------------

    def append(self, topic: int, rows: Sequence[tuple[int, int, bytes]]) -> tuple[float, list[int]]:
        """Insert batches of events, each (partition, count, body); return their store
        time and the first offset of each."""
        stamp = time.time()
        base = topic << _TOPIC_SHIFT
        firsts = []
        values = []
        for p, count, body in rows:
            key = (topic, p)
            offset = self.next[key]
            self.next[key] = offset + count
            self.bytes[key] += len(body)
            self.touched.add(key)
            firsts.append(offset)
            values.append((base | p << _PARTITION_SHIFT | offset, stamp, count, body))
        self.db.executemany(
            "INSERT INTO batches (id, stamp, count, body) VALUES (?, ?, ?, ?)", values
        )
        return stamp, firsts

    def release(self, topic: int, partition: int, below: int) -> int:
        """Delete the partition's batches that start below offset ``below`` (callers cut
        at a batch's start); return how many events went."""
        key = (topic, partition)
        first = self.first[key]
        lo, hi = row_id(topic, partition, first), row_id(topic, partition, below)
        size, count, last = self.db.execute(
            "SELECT coalesce(sum(length(body)), 0), coalesce(sum(count), 0), max(id + count) "
            "FROM batches WHERE id >= ? AND id < ?",
            (lo, hi),
        ).fetchone()
        if not count:
            return 0
        self.db.execute("DELETE FROM batches WHERE id >= ? AND id < ?", (lo, hi))
        self.bytes[key] -= size
        self.first[key] = int(last) & _OFFSET_MASK
        self.touched.add(key)
        return int(count)

    def retain(self) -> None:
        """Delete what ``max_bytes`` (split evenly over a topic's partitions) and
        ``max_age`` release, in one transaction; report (topic, partition, new first
        offset, count) to the loop."""
        max_bytes, max_age = self.max_bytes, self.max_age
        if max_bytes is None and max_age is None:
            return
        released: list[tuple[int, int, int, int]] = []
        cutoff = None if max_age is None else time.time() - max_age
        reader = Reader(self.db)
        counts: dict[int, int] = {}
        for tid, _p in self.next:
            counts[tid] = counts.get(tid, 0) + 1
        saved = (dict(self.bytes), dict(self.first))
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for (tid, p), nxt in list(self.next.items()):
                first = self.first[(tid, p)]
                cut = first
                if cutoff is not None and first < nxt:
                    cut = reader.first_at(tid, p, first, nxt, cutoff)
                if max_bytes is not None:
                    excess = self.bytes[(tid, p)] - max_bytes // counts[tid]
                    if excess > 0:
                        cut = max(cut, self._cut_for(tid, p, first, nxt, excess))
                if cut > first:
                    released.append((tid, p, cut, self.release(tid, p, cut)))
            self._save_partitions()
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            # As the rows: what release() moved on must not be saved by the next batch,
            # which would leave the rows below it on disk for good.
            self.bytes, self.first = saved
            self.touched.clear()
            raise
        if released:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self.loop.call_soon_threadsafe(self._released, released)

    def _cut_for(self, tid: int, p: int, first: int, nxt: int, excess: int) -> int:
        """The offset below which the oldest events hold at least ``excess`` bytes."""
        rows = self.db.execute(
            "SELECT id, count, length(body) FROM batches WHERE id >= ? AND id < ? ORDER BY id",
            (row_id(tid, p, first), row_id(tid, p, nxt)),
        )
        for rid, count, size in rows:
            excess -= size
            if excess <= 0:
                return int(rid & _OFFSET_MASK) + int(count)
        return nxt


class Reader:
    """Reads on a connection of their own, one at a time, called in a worker thread."""

    def __init__(
        self, db: sqlite3.Connection, decode: Callable[[bytes], list[Any]] | None = None
    ) -> None:
        self.db = db
        self.decode = decode or (lambda body: [])
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _start(self, topic: int, partition: int, lo: int) -> int:
        """The row id of the batch that holds offset ``lo`` (or of ``lo`` when none does)."""
        (found,) = self.db.execute(
            "SELECT max(id) FROM batches WHERE id >= ? AND id <= ?",
            (row_id(topic, partition, 0), row_id(topic, partition, lo)),
        ).fetchone()
        return row_id(topic, partition, lo) if found is None else int(found)

    def range(
        self, topic: int, partition: int, lo: int, hi: int, limit: int, since: float | None = None
    ) -> list[tuple[int, float, Any]]:
        """Up to ``limit`` events of a partition with offsets in [lo, hi) (and stored at
        or after ``since``), as (offset, stamp, Event), in offset order."""
        query = "SELECT id, stamp, body FROM batches WHERE id >= ? AND id < ?"
        out: list[tuple[int, float, Any]] = []
        with self.lock:
            args: list[Any] = [self._start(topic, partition, lo), row_id(topic, partition, hi)]
            if since is not None:
                query += " AND stamp >= ?"
                args.append(since)
            for rid, stamp, body in self.db.execute(query + " ORDER BY id", args):
                first = rid & _OFFSET_MASK
                events = self.decode(body)
                start = max(lo - first, 0)
                stop = min(hi - first, len(events), start + limit - len(out))
                out.extend((first + i, stamp, events[i]) for i in range(start, stop))
                if len(out) >= limit or first + len(events) >= hi:
                    break
        return out

    def first_at(self, topic: int, partition: int, lo: int, hi: int, stamp: float) -> int:
        """The first offset in [lo, hi) stored at or after ``stamp`` (``hi`` if none)."""
        with self.lock:
            row = self.db.execute(
                "SELECT id FROM batches WHERE id >= ? AND id < ? AND stamp >= ? ORDER BY id "
                "LIMIT 1",
                (self._start(topic, partition, lo), row_id(topic, partition, hi), stamp),
            ).fetchone()
        return hi if row is None else max(lo, int(row[0]) & _OFFSET_MASK)

    def state(self, bucket: str) -> dict[str, bytes]:
        with self.lock:
            rows = self.db.execute(
                "SELECT key, value FROM state WHERE bucket = ?", (bucket,)
            ).fetchall()
        return {key: bytes(value) for key, value in rows}
