"""Counters one function keeps as it runs (read by the admin API, metrics and tracing)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FunctionStats"]


@dataclass(slots=True)
class FunctionStats:
    """What a function did: invocations and their outcomes, and its worker processes.

    One invocation is one call of the function: one event, a batch, or a correlated
    set. ``failures`` counts raised, timed-out and crashed invocations (``timeouts`` is
    the timed-out part of it); ``duration_sum`` is the seconds all invocations took.
    """

    invocations: int = 0
    failures: int = 0
    timeouts: int = 0
    dropped: int = 0
    """Invocations that raised ``Drop``: their events were acked without retry."""
    replies: int = 0
    """Events published to ``reply_to``."""
    duration_sum: float = 0.0
    in_flight: int = 0
    """Invocations running now."""
    cold_starts: int = 0
    """Times the worker pool started from zero (process isolation)."""
    last_cold_start: float | None = None
    """Seconds from the first event to the worker being ready, at the last cold start."""
    workers_alive: int = 0
    """Worker processes running now (process isolation)."""
    sets_fired: int = 0
    """Correlated sets that were complete and given to the function."""
    sets_expired: int = 0
    """Correlated sets that did not complete in their window (dead-lettered)."""
    sets_open: int = 0
    """Correlated sets waiting for events now."""
    events_held: int = 0
    """Events a correlation trigger holds unacked now, in open sets and in sets being
    fired or dead-lettered (at most ``correlate.max_pending``)."""

    def as_dict(self) -> dict[str, Any]:
        """The counters by name."""
        return asdict(self)
