"""Bounds on what one filter or transform spec may cost, checked when it is compiled.

Every spec can come from a client of the sidecar, so its size, its nesting and the work
one evaluation may do are bounded; a spec over a bound is a ConfigError that names the
bound and its config key (``limits.filters.*``, docs/operations.md).

Why compiling and evaluating are then cheap by construction:

- the size is measured first, by a walk that stops as soon as the spec is over
  ``max_size`` (so it visits at most ``max_size`` values), before anything is parsed;
- every compiler does work linear in the spec, and nests at most ``max_depth`` levels,
  so no spec can exhaust the Python stack;
- evaluation visits each compiled node once per event; wildcards and LIKE never
  backtrack; a CESQL function never builds a string longer than ``max_string``, and
  the string-reading operators of one CESQL expression share ``max_scan`` characters;
  the arrays and wildcard searches of one content pattern share ``max_steps`` checks,
  a search weighed by :func:`search_weight`;
- a transform template renders at most ``max_render`` characters (it replaces the
  data), and the ``set`` steps of a chain copy at most as many from the event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from eventmesh.errors import ConfigError

__all__ = [
    "LINEAR_FROM",
    "FilterLimits",
    "check_depth",
    "check_size",
    "json_size_exceeds",
    "search_cost",
    "search_weight",
]


class FilterLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How large and how costly one subscription's filter and transform may be."""

    max_size: int = 8 * 1024
    """Characters of one filter or transform spec, as JSON (or one CESQL expression)."""
    max_depth: int = 32
    """Nesting of ``all``/``any``/``not``, of CESQL sub-expressions and of patterns."""
    max_string: int = 64 * 1024
    """Characters of any string one CESQL evaluation may build (CONCAT, SUBSTRING, ...)."""
    max_scan: int = 1024 * 1024
    """Characters the LIKE operators and string functions of one CESQL expression may
    read in one evaluation, shared evenly among them (each also at most ``max_string``)."""
    max_steps: int = 100_000
    """Checks one content pattern may make of one event: an array of n elements tested by
    c conditions takes n x c, a wildcard searching a string one per 64 characters times
    the :func:`search_weight` of the longest text it looks for."""
    max_render: int = 1024 * 1024
    """Characters one transform template may render for one event (it replaces the
    data), and that the ``set`` steps of one chain may copy from the event, together.
    Over it, the step fails and the event is dead-lettered."""

    def __post_init__(self) -> None:
        names = ("max_size", "max_depth", "max_string", "max_scan", "max_steps", "max_render")
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


DEFAULT_LIMITS = FilterLimits()


def search_weight(needle: int) -> int:
    """The work per character of searching a string for a ``needle``-character text.

    CPython's ``str.find`` is linear for long strings, but for a string under 30,000
    characters (2,500 for a needle of 100 or more) it may compare up to the whole needle
    at each position: ``a...ab a`` in a run of ``a`` does. Measured, the cost per character
    grows as 2.7 + 0.43 x needle ns, against 3.3 ns of the linear search; so a search
    counts its characters ``needle // 8 + 1`` times (once for a needle under 8).
    """
    return needle // 8 + 1


LINEAR_FROM: Final = 30_000
"""From this many characters on, CPython's ``str.find`` searches in linear time whatever
it looks for (its two-way search), so :func:`search_weight` no longer applies."""


def search_cost(length: int, weight: int) -> int:
    """The characters one ``str.find`` over a ``length``-character string counts for, with
    the :func:`search_weight` ``weight`` of what it looks for: weighed below
    :data:`LINEAR_FROM`, where the search may compare the whole needle at each position,
    and once each from there on."""
    return length * weight if length < LINEAR_FROM else length


def json_size_exceeds(value: Any, limit: int, *, most: int | None = None) -> bool:
    """True when ``value`` written as JSON would be longer than ``limit`` characters.

    An estimate that never undercounts structure (escapes inside strings aside), and a
    walk without recursion that stops as soon as the total passes ``limit``: every value
    it visits adds at least one character, so it visits at most ``limit`` values. With
    ``most``, it visits at most that many and answers False when they are not over: a
    glance that finds a few long strings, for the price of ``most`` steps.
    """
    total = 0
    visits = limit + 1 if most is None else most
    stack = [value]
    while stack:
        visits -= 1
        if visits < 0:
            return False
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bytes:
            total += len(item) + 2
        elif item is None or item is True:
            total += 4
        elif item is False:
            total += 5
        elif kind is int:
            total += item.bit_length() // 3 + 1  # no str(): huge ints are slow to format
        elif kind is float:
            total += len(repr(item))  # at most 24 characters
        elif isinstance(item, Mapping):
            total += 1 + 2 * len(item)  # braces, colons and commas
            if total > limit:
                return True
            for key, member in item.items():
                stack.append(key)
                stack.append(member)
        elif isinstance(item, list | tuple):
            total += 1 + len(item)
            if total > limit:
                return True
            stack.extend(item)
        else:
            total += 8  # not JSON: the compiler that reads it will say so
        if total > limit:
            return True
    return False


def check_size(spec: Any, limits: FilterLimits, *, what: str, where: str) -> None:
    """Raise ConfigError when ``spec`` is over ``limits.max_size`` characters as JSON."""
    if json_size_exceeds(spec, limits.max_size):
        raise ConfigError(
            f"{what} is more than {limits.max_size} characters as JSON "
            "(limits.filters.max_size); split it across subscriptions, or raise the limit",
            key=where,
        )


def check_depth(depth: int, limits: FilterLimits, *, what: str, where: str) -> None:
    """Raise ConfigError when ``depth`` is over ``limits.max_depth``."""
    if depth > limits.max_depth:
        raise ConfigError(
            f"{what} nests more than {limits.max_depth} levels (limits.filters.max_depth); "
            "flatten it",
            key=where,
        )
