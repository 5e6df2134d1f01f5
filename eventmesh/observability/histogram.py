"""A latency histogram cheap enough for the per-event path.

The OpenTelemetry SDK's ``Histogram.record`` costs about 20 µs here (attribute hashing,
a lock, exemplar sampling), twice what the in-memory route spends on a whole event. A
:class:`Histogram` is kept per label set, created once; an observation is one list
append, bucketed later in bulk, and it is read at scrape time like the other figures.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import Final

__all__ = ["LATENCY_BUCKETS", "Histogram"]

LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds in seconds: from half a millisecond (in-memory) to a minute of retries."""


class Histogram:
    """Counts of observations per bucket, their sum and count (cumulative, never reset).

    An observation is appended to :attr:`pending` and put in its bucket later, many at
    a time (:meth:`fold`: one sort and a bisection per bound, in C), which costs a
    fraction of placing each one as it comes. The per-event path may append to
    ``pending`` directly if it calls :meth:`fold` once ``pending`` holds ``FOLD_AT``
    values or more; readers fold first.
    """

    __slots__ = ("_count", "_counts", "_sum", "bounds", "pending")

    FOLD_AT: Final = 4096

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.pending: list[float] = []
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        """Add one observation (a value on a bound falls in that bound's bucket: ``le``)."""
        pending = self.pending
        pending.append(value)
        if len(pending) >= self.FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Put the pending observations in their buckets."""
        pending = self.pending
        if not pending:
            return
        values = sorted(pending)
        pending.clear()
        counts = self._counts
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect_right(values, bound)
            counts[i] += upto - below
            below = upto
        counts[-1] += len(values) - below
        self._sum += sum(values)
        self._count += len(values)

    @property
    def count(self) -> int:
        """How many observations were made."""
        self.fold()
        return self._count

    @property
    def sum(self) -> float:
        """The sum of the observations."""
        self.fold()
        return self._sum

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s observations (same bounds) to this one."""
        other.fold()
        self.fold()
        for i, n in enumerate(other._counts):
            self._counts[i] += n
        self._sum += other._sum
        self._count += other._count

    def cumulative(self) -> Iterator[tuple[str, int]]:
        """``(le, count of observations <= le)`` per bound, ending with ``+Inf``."""
        self.fold()
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self._counts, strict=True):
            total += n
            yield ("+Inf" if bound == float("inf") else repr(bound)), total
