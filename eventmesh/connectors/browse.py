"""What every connector's :meth:`~eventmesh.connectors.base.Connector.read` shares: the
bound on one page, the check of its arguments, and the merge of partitions by time.

A page holds, for each partition, a run of events with no gap (the first ones after
the cursor, or from ``since``), so a cursor made of the last offset seen per partition
never skips an event; across partitions the page is in store-time order.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Final, Protocol

from eventmesh.connectors.base import StoredEvent
from eventmesh.errors import RejectedError
from eventmesh.event import Event

__all__ = ["MAX_READ", "READ_TIMEOUT", "check_read", "merge_by_time", "read_log"]

MAX_READ: Final = 1000
"""The most events one ``read`` call returns, whatever ``limit`` asks."""
READ_TIMEOUT: Final = 10.0
"""Seconds a broker-backed ``read`` spends at most; it returns what it has by then."""


def check_read(topic: str, limit: int, after: Mapping[int, int] | None) -> int:
    """The page size to use (``limit`` bounded by :data:`MAX_READ`); ``RejectedError``
    naming the argument when ``limit`` or the cursor is not usable."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise RejectedError(f"read({topic!r}): limit must be a positive integer, got {limit!r}")
    for partition, offset in (after or {}).items():
        if not isinstance(partition, int) or not isinstance(offset, int) or partition < 0:
            raise RejectedError(
                f"read({topic!r}): the cursor 'after' maps partitions to the last offset "
                f"seen (non-negative integers), got {partition!r}: {offset!r}"
            )
    return min(limit, MAX_READ)


class _Log(Protocol):
    base: int
    events: list[Event]
    stamps: list[float]


def read_log(
    partitions: Sequence[_Log],
    *,
    since: datetime | None,
    after: Mapping[int, int] | None,
    limit: int,
) -> list[StoredEvent]:
    """A page of in-process logs (``events[i]`` stored at ``stamps[i]``, at offset
    ``base + i``), for the memory connector and any other that keeps its log in lists."""
    runs: list[Iterable[StoredEvent]] = []
    stamp = None if since is None else since.timestamp()
    for p, part in enumerate(partitions):
        start = 0
        if stamp is not None:
            start = bisect_left(part.stamps, stamp)
        if after is not None and p in after:
            start = max(start, after[p] + 1 - part.base)
        runs.append(_run(part, p, max(start, 0)))
    return merge_by_time(runs, limit)


def _run(part: _Log, p: int, start: int) -> Iterable[StoredEvent]:
    events, stamps, base = part.events, part.stamps, part.base
    for i in range(start, len(events)):
        yield StoredEvent(events[i], p, base + i, stamps[i])


def merge_by_time(runs: Iterable[Iterable[StoredEvent]], limit: int) -> list[StoredEvent]:
    """The first ``limit`` events of per-partition runs, merged by store time (events
    without one sort first, then by partition and offset)."""
    merged = heapq.merge(
        *runs,
        key=lambda s: (s.timestamp if s.timestamp is not None else -1.0, s.partition, s.offset),
    )
    out: list[StoredEvent] = []
    for stored in merged:
        out.append(stored)
        if len(out) >= limit:
            break
    return out
