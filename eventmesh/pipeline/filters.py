"""Filters: the CloudEvents Subscriptions API dialects, compiled once into plain callables.

:func:`compile_filter` checks a whole spec (``exact``, ``prefix``, ``suffix``, ``all``,
``any``, ``not``, ``sql``, ``pattern``) against the limits of
:mod:`eventmesh.pipeline.limits` and raises ConfigError naming the path of the first
problem. The result is a closure specialised for its dialect: ``exact`` on one context
attribute is a single attribute read and comparison. See docs/filters.md,
'Filter dialects'.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from eventmesh.errors import ConfigError
from eventmesh.event import CONTEXT_ATTRIBUTES, Event
from eventmesh.pipeline._combine import all_of, any_of
from eventmesh.pipeline._jsonpath import describe as _kind
from eventmesh.pipeline._jsonpath import join_path as _join
from eventmesh.pipeline._jsonpath import rfc3339
from eventmesh.pipeline.limits import DEFAULT_LIMITS, FilterLimits, check_depth, check_size
from eventmesh.typing import Filter

__all__ = ["DIALECTS", "Filter", "compile_filter", "match_all"]

_NAME: Final = re.compile(r"[a-z0-9]+\Z")
_INT_TEXT: Final = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_INT32_TEXT: Final = len(str(-(2**31)))
"""Characters of the longest 32-bit integer's text, ``-2147483648``."""
_NOT_ATTRIBUTES: Final = frozenset({"data", "data_base64", "extensions"})
# Context attributes held as str on the Event; ``time`` is a datetime and is compared as text.
_STRING_CONTEXT: Final = CONTEXT_ATTRIBUTES - {"time"}


def match_all(event: Event) -> bool:
    """The filter that matches every event (what no filter means)."""
    return True


def compile_filter(
    spec: Mapping[str, Any] | Sequence[Any] | None,
    *,
    where: str = "filter",
    limits: FilterLimits = DEFAULT_LIMITS,
) -> Filter:
    """Compile a filter spec into a :data:`Filter`; ``None`` matches every event.

    Raises ConfigError naming the path inside the spec (prefixed with ``where``) for
    anything that cannot be compiled: an unknown dialect (the message lists the known
    ones), a malformed dialect body, an invalid CESQL expression or pattern, or a spec
    over one of ``limits``.
    """
    if spec is None:
        return match_all
    check_size(spec, limits, what="the filter", where=where)
    return _compile(spec, where, limits, 1)


def _compile(spec: Any, path: str, limits: FilterLimits, depth: int) -> Filter:
    check_depth(depth, limits, what="the filter", where=path)
    if isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
        # The Subscriptions API's ``filters`` array: every filter must match; none is true.
        return _all(
            [_compile(item, f"{path}[{i}]", limits, depth + 1) for i, item in enumerate(spec)]
        )
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"a filter is a mapping naming one dialect ({_known()}), got {_kind(spec)}",
            key=path,
        )
    if len(spec) != 1:
        names = ", ".join(map(str, spec)) or "none"
        raise ConfigError(
            f"a filter names exactly one dialect, got {len(spec)} ({names}); "
            "combine several with 'all' or 'any'",
            key=path,
        )
    ((dialect, body),) = spec.items()
    compile_dialect = DIALECTS.get(dialect) if isinstance(dialect, str) else None
    if compile_dialect is None:
        raise ConfigError(f"unknown filter dialect {dialect!r}; known: {_known()}", key=path)
    return compile_dialect(body, _join(path, dialect), limits, depth)


# -- exact, prefix, suffix ---------------------------------------------------------------


def _attributes(body: Any, path: str) -> list[tuple[str, str]]:
    """The (attribute, value) pairs of an exact/prefix/suffix body, checked."""
    if not isinstance(body, Mapping) or not body:
        raise ConfigError(f"expected a mapping of attribute to string, got {_kind(body)}", key=path)
    pairs = []
    for name, value in body.items():
        _check_attribute_name(name, path)
        if not isinstance(value, str) or not value:
            hint = " (quote it in YAML)" if isinstance(value, int | float | bool) else ""
            raise ConfigError(
                f"expected a non-empty string, got {_kind(value)}{hint}", key=_join(path, name)
            )
        pairs.append((name, value))
    return pairs


def _check_attribute_name(name: Any, path: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{name!r} is not an attribute name: CloudEvents attribute names are lower-case "
            "letters and digits",
            key=path,
        )
    if name in _NOT_ATTRIBUTES:
        raise ConfigError(
            f"{name!r} is not an attribute; to match on the data use the 'pattern' "
            "or 'sql' dialect",
            key=path,
        )


def _text_getter(name: str) -> Callable[[Event], str | None]:
    """The attribute's canonical string form, or None when the event does not have it."""
    if name == "time":

        def time(event: Event) -> str | None:
            value = event.time
            return None if value is None else rfc3339(value)

        return time
    if name in _STRING_CONTEXT:
        return operator.attrgetter(name)

    def extension(event: Event) -> str | None:
        value = event.extensions.get(name)
        if value is None or type(value) is str:
            return value
        if type(value) is bool:
            return "true" if value else "false"
        return str(value)

    return extension


def _compile_exact(body: Any, path: str, limits: FilterLimits, depth: int) -> Filter:
    pairs = _attributes(body, path)
    context = [(n, v) for n, v in pairs if n in _STRING_CONTEXT]
    others = [_exact_one(n, v) for n, v in pairs if n not in _STRING_CONTEXT]
    parts: list[Filter] = []
    if len(context) == 1:
        ((name, value),) = context
        get = operator.attrgetter(name)
        parts.append(lambda event: get(event) == value)
    elif context:
        get_all = operator.attrgetter(*(n for n, _ in context))
        values = tuple(v for _, v in context)
        parts.append(lambda event: get_all(event) == values)
    return _all(parts + others)


def _exact_one(name: str, value: str) -> Filter:
    if name == "time":
        get = _text_getter(name)
        return lambda event: get(event) == value
    # An extension: a string compares as it is; an int or bool only by its canonical text.
    alternative: int | bool | None = None
    if value in ("true", "false"):
        alternative = value == "true"
    elif len(value) <= _INT32_TEXT and _INT_TEXT.match(value) and -(2**31) <= int(value) < 2**31:
        alternative = int(value)  # measured first: int() of thousands of digits raises
    if alternative is None:
        return lambda event: event.extensions.get(name) == value
    kind = type(alternative)

    def exact(event: Event) -> bool:
        found = event.extensions.get(name)
        return found == value or (found == alternative and type(found) is kind)

    return exact


def _compile_prefix(body: Any, path: str, limits: FilterLimits, depth: int) -> Filter:
    return _all([_starts_with(_text_getter(n), v) for n, v in _attributes(body, path)])


def _compile_suffix(body: Any, path: str, limits: FilterLimits, depth: int) -> Filter:
    return _all([_ends_with(_text_getter(n), v) for n, v in _attributes(body, path)])


def _starts_with(get: Callable[[Event], str | None], value: str) -> Filter:
    return lambda event: (get(event) or "").startswith(value)  # value is never empty


def _ends_with(get: Callable[[Event], str | None], value: str) -> Filter:
    return lambda event: (get(event) or "").endswith(value)


# -- all, any, not -----------------------------------------------------------------------


def _nested_list(body: Any, path: str, limits: FilterLimits, depth: int) -> list[Filter]:
    if not isinstance(body, Sequence) or isinstance(body, str | bytes) or not body:
        raise ConfigError(f"expected a non-empty list of filters, got {_kind(body)}", key=path)
    return [_compile(item, f"{path}[{i}]", limits, depth + 1) for i, item in enumerate(body)]


def _compile_all(body: Any, path: str, limits: FilterLimits, depth: int) -> Filter:
    return _all(_nested_list(body, path, limits, depth))


def _compile_any(body: Any, path: str, limits: FilterLimits, depth: int) -> Filter:
    return any_of(_nested_list(body, path, limits, depth))


def _compile_not(body: Any, path: str, limits: FilterLimits, depth: int) -> Filter:
    if not isinstance(body, Mapping):
        raise ConfigError(f"expected one filter (a mapping), got {_kind(body)}", key=path)
    inner = _compile(body, path, limits, depth + 1)
    return lambda event: not inner(event)


def _all(filters: list[Filter]) -> Filter:
    return all_of(filters) if filters else match_all


# -- sql and pattern ---------------------------------------------------------------------


def _compile_sql(body: Any, path: str, limits: FilterLimits, depth: int) -> Filter:
    if not isinstance(body, str) or not body.strip():
        raise ConfigError(f"expected a CESQL expression (a string), got {_kind(body)}", key=path)
    from eventmesh.pipeline import cesql  # imported here: most configs never use it

    try:
        expression = cesql.compile(body, limits=limits)
    except ConfigError as exc:  # cesql.ParseError, with the column
        raise ConfigError(str(exc), key=path) from exc
    return expression.matches


def _compile_pattern(body: Any, path: str, limits: FilterLimits, depth: int) -> Filter:
    from eventmesh.pipeline.patterns import compile_pattern

    return compile_pattern(body, where=path, limits=limits, checked=True)


DIALECTS: Final[Mapping[str, Callable[[Any, str, FilterLimits, int], Filter]]] = {
    "all": _compile_all,
    "any": _compile_any,
    "exact": _compile_exact,
    "not": _compile_not,
    "pattern": _compile_pattern,
    "prefix": _compile_prefix,
    "sql": _compile_sql,
    "suffix": _compile_suffix,
}
"""The dialect names :func:`compile_filter` knows, each with its compile function
(taking the body, its path, the limits and the nesting depth of the filter it is)."""


def _known() -> str:
    return ", ".join(DIALECTS)
