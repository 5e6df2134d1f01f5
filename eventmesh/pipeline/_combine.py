"""AND and OR of compiled checks, unrolled for the short cases that are most common.

Filters and content patterns both combine plain ``check(value) -> bool`` callables;
these build the combined callable once, at compile time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["all_of", "any_of"]

T = TypeVar("T")


def _always(value: object) -> bool:
    return True


def all_of(checks: Sequence[Callable[[T], bool]]) -> Callable[[T], bool]:
    """True when every check is (and for no checks at all)."""
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda value: first(value) and second(value)
    if len(checks) == 3:
        first, second, third = checks
        return lambda value: first(value) and second(value) and third(value)
    frozen = tuple(checks)

    def all_(value: T) -> bool:
        for check in frozen:  # noqa: SIM110 - a loop is 2x faster than a generator
            if not check(value):
                return False
        return True

    return all_


def any_of(checks: Sequence[Callable[[T], bool]]) -> Callable[[T], bool]:
    """True when at least one check is (never for no checks)."""
    if not checks:
        return lambda value: False
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda value: first(value) or second(value)
    frozen = tuple(checks)

    def any_(value: T) -> bool:
        for check in frozen:  # noqa: SIM110 - a loop is 2x faster than a generator
            if check(value):
                return True
        return False

    return any_
