"""One log line per kind of bad request per interval, however many clients send them.

A malformed request is the client's mistake, not ours: it is worth a WARNING that says
what was wrong, never a traceback, and a flood of them (5,000 bad calls a second) must
not flood the log. :class:`LogLimit` writes the first of each kind at once and then at
most one line per ``interval`` seconds, saying how many were left out in between.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

__all__ = ["INTERVAL", "LogLimit"]

INTERVAL: Final = 1.0
"""Seconds between two lines of the same kind."""


class LogLimit:
    """Rate-limited warnings on ``logger``; ``kind`` is a fixed string of the caller's
    (never a value from the request), so the table stays small."""

    __slots__ = ("_last", "interval", "logger")

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, list[float]] = {}
        """kind -> [time of the last line, lines left out since]"""

    def warning(self, kind: str, message: str, *args: Any) -> None:
        """Log ``message % args`` unless a line of ``kind`` was written less than
        ``interval`` seconds ago; then only count it."""
        self.log(logging.WARNING, kind, message, *args)

    def log(
        self, level: int, kind: str, message: str, *args: Any, exc_info: BaseException | None = None
    ) -> None:
        """:meth:`warning` at ``level``; ``exc_info`` (a traceback) goes with the lines
        written, not with those left out."""
        now = time.monotonic()
        state = self._last.get(kind)
        if state is not None and now - state[0] < self.interval:
            state[1] += 1
            return
        left_out = int(state[1]) if state is not None else 0
        self._last[kind] = [now, 0]
        if left_out:
            message += " (and %d more like it not logged since the last line)"
            args = (*args, left_out)
        self.logger.log(level, message, *args, exc_info=exc_info)
