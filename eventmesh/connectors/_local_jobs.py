"""The writer's jobs besides appending events: finding or creating a topic, and plain
statements over rows (group positions, state buckets)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from eventmesh.connectors import _sqlite
from eventmesh.connectors._sqlite import Job, Writer

__all__ = [
    "DELETE_GROUP",
    "DELETE_STATE",
    "PUT_STATE",
    "SAVE_POSITIONS",
    "NewTopic",
    "Sql",
    "TooManyTopicsError",
]

log = logging.getLogger(__name__)


class NewTopic(Job):
    """Find or create a topic; the result is its (id, partitions), or a
    :class:`TooManyTopicsError` when the store holds as many as it can number: returned,
    not raised, so that it fails this job alone and not the others of its commit."""

    __slots__ = ("name", "partitions")

    def __init__(self, name: str, partitions: int) -> None:
        super().__init__()
        self.name = name
        self.partitions = partitions

    def apply(self, writer: Writer) -> tuple[int, int] | TooManyTopicsError:
        db = writer.db
        found = db.execute(
            "SELECT id, partitions FROM topics WHERE name = ?", (self.name,)
        ).fetchone()
        if found is not None:
            return int(found[0]), int(found[1])
        (count,) = db.execute("SELECT count(*) FROM topics").fetchone()
        if count >= _sqlite.MAX_TOPICS:
            return TooManyTopicsError(count)
        tid = db.execute(
            "INSERT INTO topics (name, partitions) VALUES (?, ?)", (self.name, self.partitions)
        ).lastrowid
        assert tid is not None
        db.executemany(
            "INSERT INTO partitions (topic, part, first, next, bytes) VALUES (?, ?, 0, 0, 0)",
            [(tid, p) for p in range(self.partitions)],
        )
        for p in range(self.partitions):
            writer.next[(tid, p)] = writer.first[(tid, p)] = writer.bytes[(tid, p)] = 0
        writer.partitions[tid] = self.partitions
        return tid, self.partitions


class TooManyTopicsError(Exception):
    """The store cannot number another topic; ``count`` is how many it holds."""

    def __init__(self, count: int) -> None:
        super().__init__(f"the local store holds {count} topics, the most it can number")
        self.count = count


class Sql(Job):
    """One statement over rows (positions, state); ``after`` runs on the loop once they
    are committed. Without a future, a failure is logged."""

    __slots__ = ("after", "lazy", "rows", "sql")

    def __init__(
        self,
        sql: str,
        rows: list[tuple[Any, ...]],
        after: Callable[[], None] | None = None,
        *,
        lazy: bool = False,
    ) -> None:
        super().__init__(len(rows))
        self.sql = sql
        self.rows = rows
        self.after = after
        self.lazy = lazy

    def apply(self, writer: Writer) -> None:
        writer.db.executemany(self.sql, self.rows)

    def finish(self, result: Any, error: BaseException | None) -> None:
        if error is None and self.after is not None:
            self.after()
        elif error is not None and self.future is None:
            log.error("local store: saving positions or state failed: %r", error)
        super().finish(result, error)


SAVE_POSITIONS = (
    "INSERT INTO positions (topic, grp, part, committed) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (topic, grp, part) DO UPDATE SET committed = excluded.committed "
    "WHERE excluded.committed > positions.committed"
)
"""A group's committed offset of a partition; it only ever moves forward."""
PUT_STATE = (
    "INSERT INTO state (bucket, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value"
)
DELETE_STATE = "DELETE FROM state WHERE bucket = ? AND key = ?"
DELETE_GROUP = "DELETE FROM positions WHERE topic = ? AND grp = ?"
