"""The conditions of content patterns: one value's test for each operator, and the
work a searching wildcard may do. Only :mod:`eventmesh.pipeline.patterns` uses this
module; its docstring describes the conditions.
"""

from __future__ import annotations

import ipaddress
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

from eventmesh.errors import ConfigError
from eventmesh.pipeline._combine import any_of
from eventmesh.pipeline._jsonpath import describe, join_path
from eventmesh.pipeline.limits import search_cost, search_weight

__all__ = [
    "KNOWN",
    "OPERATORS",
    "Match",
    "Work",
    "exact_values",
    "excluded_by",
    "one_operator",
    "scalar",
    "wildcard",
]

Match: TypeAlias = Callable[[Any], bool]
"""Takes the value found in the event (MISSING when absent); True when it matches."""


_NUMERIC_OPERATORS: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class Work:
    """The steps left to the entry being evaluated (one per compiled pattern).

    An entry (the check of ``data`` or of an attribute) sets ``left`` to its share when
    it starts; every array it walks takes its length times the checks each element
    gets, and every string a wildcard searches a step per 64 characters, times the
    :func:`~eventmesh.pipeline.limits.search_weight` of its longest piece. A walk that
    would go below zero does not happen: the field does not match. Patterns run on the
    event loop; a compiled pattern evaluated by two threads at once would share this.
    """

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = 0


def one_operator(item: Mapping[str, Any], path: str) -> tuple[str, Any]:
    if len(item) != 1:
        raise ConfigError(
            f"a condition holds one operator, got {len(item)} ({', '.join(map(str, item))}); "
            "list them as separate items to OR them",
            key=path,
        )
    ((name, argument),) = item.items()
    if name not in KNOWN:
        raise ConfigError(f"unknown operator {name!r}; known: {', '.join(KNOWN)}", key=path)
    return name, argument


def scalar(value: Any, path: str) -> Any:
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"expected a finite number, got {value!r}", key=path)
        return value
    raise ConfigError(
        f"expected a string, number, boolean, null or a condition such as "
        f"{{'prefix': 'x'}}, got {describe(value)}",
        key=path,
    )


def exact_values(values: list[Any]) -> Match:
    """Equality that keeps JSON types apart: 1 is not true, 5 is not "5", 5 is 5.0."""
    strings = frozenset(v for v in values if type(v) is str)
    numbers = frozenset(v for v in values if type(v) is int or type(v) is float)
    bools = frozenset(v for v in values if type(v) is bool)
    null = any(v is None for v in values)
    if strings and not (numbers or bools or null):
        return lambda value: type(value) is str and value in strings

    def exact(value: Any) -> bool:
        kind = type(value)
        if kind is str:
            return value in strings
        if kind is int or kind is float:
            return value in numbers
        if kind is bool:
            return value in bools
        return value is None and null

    return exact


# -- operators ---------------------------------------------------------------------------


def _string(argument: Any, path: str) -> str:
    if not isinstance(argument, str):
        raise ConfigError(f"expected a string, got {describe(argument)}", key=path)
    return argument


def _ignore_case_form(argument: Mapping[str, Any], path: str) -> str:
    if set(argument) != {"equals-ignore-case"}:
        raise ConfigError(
            "expected a string, or {'equals-ignore-case': string} to ignore case", key=path
        )
    return _string(argument["equals-ignore-case"], join_path(path, "equals-ignore-case"))


def _prefix(argument: Any, path: str) -> Match:
    if isinstance(argument, Mapping):
        folded = _ignore_case_form(argument, path).casefold()
        size = len(folded)  # casefold maps each character on its own, to 1 or more
        return lambda value: type(value) is str and value[:size].casefold().startswith(folded)
    prefix = _string(argument, path)
    return lambda value: type(value) is str and value.startswith(prefix)


def _suffix(argument: Any, path: str) -> Match:
    if isinstance(argument, Mapping):
        folded = _ignore_case_form(argument, path).casefold()
        size = len(folded)
        return lambda value: (
            type(value) is str and value[len(value) - size :].casefold().endswith(folded)
        )
    suffix = _string(argument, path)
    return lambda value: type(value) is str and value.endswith(suffix)


def _equals_ignore_case(argument: Any, path: str) -> Match:
    folded = _string(argument, path).casefold()
    size = len(folded)  # a longer value cannot fold to it: folding never shortens
    return lambda value: type(value) is str and len(value) <= size and value.casefold() == folded


def wildcard(argument: Any, path: str, work: Work | None = None, *, over: bool = False) -> Match:
    """A wildcard's test; one that searches the value takes a step per 64 characters,
    times the search weight of its longest piece, from ``work`` and answers ``over``
    when none are left.

    The weight makes the steps an upper bound of the work: one search for a piece of m
    characters may compare m characters at each position of the value, and the pieces
    of one glob together try each position at most once (see :func:`_glob`).
    """
    pieces = _wildcard_pieces(_string(argument, path), path)
    if len(pieces) == 1:
        (whole,) = pieces
        return lambda value: type(value) is str and value == whole
    if len(pieces) == 2:
        head, tail = pieces
        least = len(head) + len(tail)
        return lambda value: (
            type(value) is str
            and len(value) >= least
            and value.startswith(head)
            and value.endswith(tail)
        )
    if len(pieces) == 3 and not pieces[0] and not pieces[2]:
        middle = pieces[1]
        search: Match = lambda value: type(value) is str and middle in value  # noqa: E731
    else:
        search = _glob(pieces[0], tuple(pieces[1:-1]), pieces[-1])
    if work is None:
        return search
    return _charged(search, search_weight(max(map(len, pieces[1:-1]))), work, over)


def _charged(search: Match, weight: int, work: Work, over: bool) -> Match:
    def charged(value: Any) -> bool:
        if type(value) is str:
            work.left -= (search_cost(len(value), weight) >> 6) + 1
            if work.left < 0:
                return over
        return search(value)

    return charged


def _glob(head: str, middle: tuple[str, ...], tail: str) -> Match:
    """``head*middle[0]*...*tail`` in linear time, without backtracking.

    With only ``*`` as a wildcard, placing each middle piece at its leftmost occurrence
    after the previous one is optimal: any match can be slid left onto it. So one
    ``str.find`` per piece, over a window that only moves right, decides the match; a
    search starts past the position where the one before it found its piece, so all of
    them together try each position of the value at most once.
    """
    least = len(head) + sum(map(len, middle)) + len(tail)
    start, tail_length = len(head), len(tail)
    if len(middle) == 1:  # the common 'reports/*/summary.*': one search, no loop
        (piece,) = middle
        return lambda value: (
            type(value) is str
            and len(value) >= least
            and value.startswith(head)
            and value.endswith(tail)
            and value.find(piece, start, len(value) - tail_length) >= 0
        )

    def glob(value: Any) -> bool:
        if (
            type(value) is not str
            or len(value) < least
            or not value.startswith(head)
            or not value.endswith(tail)
        ):
            return False
        position, end = start, len(value) - tail_length
        for piece in middle:
            found = value.find(piece, position, end)
            if found < 0:
                return False
            position = found + len(piece)
        return True

    return glob


def _wildcard_pieces(text: str, path: str) -> list[str]:
    """The literal runs between unescaped stars."""
    pieces = [""]
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            following = text[i + 1 : i + 2]
            if following not in ("*", "\\"):
                raise ConfigError(
                    f"wildcard {text!r}: a backslash escapes only '*' or '\\' (column {i + 1})",
                    key=path,
                )
            pieces[-1] += following
            i += 2
            continue
        if char == "*":
            if text[i + 1 : i + 2] == "*":
                raise ConfigError(
                    f"wildcard {text!r}: consecutive '*' at column {i + 1}; one matches "
                    "any run of characters",
                    key=path,
                )
            pieces.append("")
        else:
            pieces[-1] += char
        i += 1
    return pieces


def _numeric(argument: Any, path: str) -> Match:
    if not isinstance(argument, list) or not argument or len(argument) % 2:
        raise ConfigError(
            "expected operator and number pairs such as ['>', 0, '<=', 5], "
            f"got {describe(argument)}"
            + (f" of {len(argument)} items" if isinstance(argument, list) and argument else ""),
            key=path,
        )
    comparisons: list[tuple[Callable[[Any, Any], bool], int | float]] = []
    for i in range(0, len(argument), 2):
        name, number = argument[i], argument[i + 1]
        compare = _NUMERIC_OPERATORS.get(name) if isinstance(name, str) else None
        if compare is None:
            raise ConfigError(
                f"unknown numeric operator {name!r}; known: {' '.join(_NUMERIC_OPERATORS)}",
                key=f"{path}[{i}]",
            )
        if (
            not isinstance(number, int | float)
            or isinstance(number, bool)
            or (isinstance(number, float) and not math.isfinite(number))  # int: no float()
        ):
            raise ConfigError(
                f"expected a number after {name!r}, got {describe(number)}",
                key=f"{path}[{i + 1}]",
            )
        comparisons.append((compare, number))
    if len(comparisons) == 1:
        return _NUMERIC_ONE[argument[0]](comparisons[0][1])
    if len(comparisons) == 2:
        (first, low), (second, high) = comparisons
        return lambda value: (
            (type(value) is int or type(value) is float)
            and first(value, low)
            and second(value, high)
        )

    def numeric(value: Any) -> bool:
        if type(value) is not int and type(value) is not float:
            return False
        for compare, bound in comparisons:  # noqa: SIM110 - a loop is 2x faster than a generator
            if not compare(value, bound):
                return False
        return True

    return numeric


_NUMERIC_ONE: Final[Mapping[str, Callable[[float], Match]]] = {
    "=": lambda n: lambda v: (type(v) is int or type(v) is float) and v == n,
    "!=": lambda n: lambda v: (type(v) is int or type(v) is float) and v != n,
    "<": lambda n: lambda v: (type(v) is int or type(v) is float) and v < n,
    "<=": lambda n: lambda v: (type(v) is int or type(v) is float) and v <= n,
    ">": lambda n: lambda v: (type(v) is int or type(v) is float) and v > n,
    ">=": lambda n: lambda v: (type(v) is int or type(v) is float) and v >= n,
}
"""One comparison, written out: a third faster than calling ``operator.gt``."""


def _cidr(argument: Any, path: str) -> Match:
    text = _string(argument, path)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(
            f"{text!r} is not a CIDR block such as '10.0.0.0/24' or '2001:db8::/32': {exc}",
            key=path,
        ) from None

    def cidr(value: Any) -> bool:
        if type(value) is not str:
            return False
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        return address in network

    return cidr


_EXCLUDABLE: Final[Mapping[str, Callable[[Any, str], Match]]] = {
    "equals-ignore-case": _equals_ignore_case,
    "prefix": _prefix,
    "suffix": _suffix,
    "wildcard": wildcard,
}


def excluded_by(argument: Any, path: str, work: Work) -> Match:
    """What ``{"anything-but": argument}`` excludes (the field matches what this rejects);
    a wildcard out of steps excludes everything, so that the field does not match."""
    excluded: Match
    if isinstance(argument, Mapping):
        if len(argument) != 1 or next(iter(argument)) not in _EXCLUDABLE:
            raise ConfigError(
                "expected a value, a list of values, or one of "
                + ", ".join(f"{{{name!r}: ...}}" for name in _EXCLUDABLE),
                key=path,
            )
        ((name, inner),) = argument.items()
        at = join_path(path, name)
        build = _EXCLUDABLE[name]
        if isinstance(inner, list) and name in ("equals-ignore-case", "wildcard"):
            if not inner:
                raise ConfigError("expected a non-empty list of strings", key=at)
            excluded = any_of(
                [_build(build, item, f"{at}[{i}]", work) for i, item in enumerate(inner)]
            )
        else:
            excluded = _build(build, inner, at, work)
    elif isinstance(argument, list):
        if not argument:
            raise ConfigError("expected a non-empty list of values to exclude", key=path)
        excluded = exact_values([scalar(item, f"{path}[{i}]") for i, item in enumerate(argument)])
    else:
        excluded = exact_values([scalar(argument, path)])
    return excluded


def _build(build: Callable[[Any, str], Match], argument: Any, path: str, work: Work) -> Match:
    if build is wildcard:
        return wildcard(argument, path, work, over=True)
    return build(argument, path)


OPERATORS: Final[Mapping[str, Callable[[Any, str], Match]]] = {
    "cidr": _cidr,
    "equals-ignore-case": _equals_ignore_case,
    "numeric": _numeric,
    "prefix": _prefix,
    "suffix": _suffix,
    "wildcard": wildcard,
}
KNOWN: Final = (
    "anything-but",
    "cidr",
    "equals-ignore-case",
    "exists",
    "numeric",
    "prefix",
    "suffix",
    "wildcard",
)
