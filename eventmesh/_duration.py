"""Durations in config: ``1.5`` (seconds), ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["Duration", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*\Z")


class Duration(float):
    """Seconds, as a float; config files may write them with a unit."""

    __slots__ = ()


def parse_duration(value: Any) -> Duration:
    """Seconds from a number or a string with a unit; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 1.5, '250ms' or '30s', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return Duration(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            return Duration(float(match.group(1)) * _UNITS[match.group(2) or "s"])
    raise ValueError(f"expected a duration such as 1.5, '250ms' or '30s', got {value!r}")
