"""Reads of the local store for consumers and ``read()``, run in a worker thread: what
the in-memory tails no longer hold."""

from __future__ import annotations

from eventmesh.connectors._sqlite import Reader
from eventmesh.event import Event

__all__ = ["browse", "load"]


def _spans(offsets: list[int]) -> list[tuple[int, int]]:
    """Sorted offsets as [lo, hi) ranges to read, a range per cluster: offsets far apart
    (redeliveries) are not read as one long range."""
    spans: list[tuple[int, int]] = []
    for offset in offsets:
        if spans and offset - spans[-1][1] < 256:
            spans[-1] = (spans[-1][0], offset + 1)
        else:
            spans.append((offset, offset + 1))
    return spans


def load(
    reader: Reader | None, tid: int, wanted: dict[int, list[int]]
) -> dict[tuple[int, int], tuple[Event, float]]:
    """The events at these offsets of each partition, by (partition, offset); an offset
    retention deleted is missing."""
    assert reader is not None
    out = {}
    for p, offsets in wanted.items():
        keep = set(offsets)
        for a, b in _spans(sorted(keep)):
            for offset, stamp, event in reader.range(tid, p, a, b, b - a):
                if offset in keep:
                    out[(p, offset)] = (event, stamp)
    return out


def browse(
    reader: Reader | None,
    tid: int,
    ranges: list[tuple[int, int, int]],
    since: float | None,
    limit: int,
) -> list[tuple[float, int, int, Event]]:
    """Up to ``limit`` events of the (partition, lo, hi) ranges stored at or after
    ``since``, as (stamp, partition, offset, event), oldest first."""
    assert reader is not None
    rows = [
        (stamp, p, offset, event)
        for p, lo, hi in ranges
        if lo < hi
        for offset, stamp, event in reader.range(tid, p, lo, hi, limit, since)
    ]
    rows.sort(key=lambda row: row[:3])
    return rows[:limit]
