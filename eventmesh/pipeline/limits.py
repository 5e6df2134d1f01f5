"""Bounds on what one filter or transform spec may cost, checked when it is compiled.

Every spec can come from a client of the sidecar, so its size, its nesting and the work
one evaluation may do are bounded; a spec over a bound is a ConfigError that names the
bound and its config key (``limits.filters.*``, docs/operations.md).
"""

from __future__ import annotations

import msgspec

__all__ = ["FilterLimits"]


class FilterLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How large and how costly one subscription's filter and transform may be."""

    max_size: int = 8 * 1024
    """Characters of one filter or transform spec, as JSON (or one CESQL expression)."""
    max_depth: int = 32
    """Nesting of ``all``/``any``/``not``, of CESQL sub-expressions and of patterns."""
    max_string: int = 64 * 1024
    """Characters of any string one CESQL evaluation may build (CONCAT, SUBSTRING, ...)."""

    def __post_init__(self) -> None:
        for name in ("max_size", "max_depth", "max_string"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
