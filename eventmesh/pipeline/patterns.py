"""Content patterns: the JSON event-pattern language of Apache EventMesh and EventBridge.

A pattern has the shape of the events it matches: attribute names, ``data`` (read as
JSON, nested as deep as the payload) and ``$or``, each field a list of exact values or
conditions. It is compiled once into a closure; a malformed pattern is a ConfigError
naming its path. See docs/filters.md, 'Content patterns', for the rules and
'Where we differ from Apache EventMesh' for what this module deliberately does
differently.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from typing import Any, Final

from eventmesh.errors import ConfigError
from eventmesh.event import CONTEXT_ATTRIBUTES, Event, JSONData, stored_data
from eventmesh.pipeline._combine import all_of, any_of
from eventmesh.pipeline._conditions import (
    OPERATORS,
    Match,
    Work,
    exact_values,
    excluded_by,
    one_operator,
    scalar,
    wildcard,
)
from eventmesh.pipeline._jsonpath import MISSING, attribute_getter, describe, join_path, json_data
from eventmesh.pipeline.limits import DEFAULT_LIMITS, FilterLimits, check_depth, check_size
from eventmesh.typing import Filter

__all__ = ["compile_pattern"]


_NAME: Final = re.compile(r"[a-z0-9]+\Z")
_STRING_CONTEXT: Final = CONTEXT_ATTRIBUTES - {"time"}
_EMPTY: Final[dict[str, Any]] = {}
_CHUNK: Final = 1024
"""Array elements tried before the steps they cost are taken again (see Work)."""


def compile_pattern(
    pattern: Mapping[str, Any],
    *,
    where: str,
    limits: FilterLimits = DEFAULT_LIMITS,
    checked: bool = False,
) -> Filter:
    """Compile a content pattern into a :data:`Filter`.

    Raises ConfigError naming the path inside the pattern (prefixed with ``where``)
    for anything that is not a valid pattern, and for a pattern larger than
    ``limits.max_size`` characters as JSON (not measured again when ``checked``: the
    filter holding it was) or nesting objects and ``$or`` more than ``limits.max_depth``.
    """
    if not isinstance(pattern, Mapping) or not pattern:
        raise ConfigError(
            f"expected a pattern (a mapping of attribute or 'data' to conditions), "
            f"got {describe(pattern)}",
            key=where,
        )
    if not checked:
        check_size(pattern, limits, what="the pattern", where=where)
    ctx = _Context(limits)
    checks = all_of(_event_checks(pattern, where, ctx, 1))
    # Each entry into the event's values gets an even share of the pattern's steps, so
    # that all of them together take at most max_steps on one event.
    ctx.share[0] = limits.max_steps // max(1, ctx.entries)
    return checks


class _Context:
    """What the compilers of one pattern share: its limits and its work budget."""

    __slots__ = ("entries", "limits", "share", "work")

    def __init__(self, limits: FilterLimits) -> None:
        self.limits = limits
        self.work = Work()
        self.share = [0]  # set once the whole pattern is compiled and its entries known
        self.entries = 0

    def entry(self) -> tuple[Work, list[int]]:
        self.entries += 1
        return self.work, self.share


# -- the event level: attributes, data, $or -------------------------------------------


def _event_checks(pattern: Mapping[str, Any], path: str, ctx: _Context, depth: int) -> list[Filter]:
    check_depth(depth, ctx.limits, what="the pattern", where=path)
    attributes: list[Filter] = []
    data: list[Filter] = []
    alternatives: list[Filter] = []
    for key, spec in pattern.items():
        at = join_path(path, key)
        if key == "$or":
            branches = [
                all_of(_event_checks(branch, f"{at}[{i}]", ctx, depth + 1))
                for i, branch in enumerate(_branches(spec, at))
            ]
            alternatives.append(any_of(branches))
        elif key == "data" and isinstance(spec, Mapping):
            data.append(_on_data_object(_fields(spec, at, ctx, depth + 1), spec, ctx))
        elif key == "data":
            data.append(_on_data(_node(spec, at, ctx, depth + 1), ctx))
        else:
            attributes.append(_attribute_check(key, spec, path, at, ctx))
    # Cheap checks first; fields are ANDed, so the order changes only the cost.
    return attributes + data + alternatives


def _on_data(match: Match, ctx: _Context) -> Filter:
    work, share = ctx.entry()

    def on_data(event: Event) -> bool:
        work.left = share[0]
        return match(json_data(event))

    return on_data


def _on_data_object(fields: Match, spec: Mapping[str, Any], ctx: _Context) -> Filter:
    work, share = ctx.entry()
    whole = _over_value(fields, spec, ctx)

    def on_data(event: Event) -> bool:
        work.left = share[0]
        data = stored_data(event)
        kind = type(data)
        if kind is dict:  # the common case, read without a call
            return fields(data)
        if kind is JSONData:  # kept JSON: its value, parsed on the first read
            data = data.value
            if type(data) is dict:
                return fields(data)
        return whole(json_data(event))

    return on_data


def _attribute_check(name: Any, spec: Any, path: str, at: str, ctx: _Context) -> Filter:
    if not isinstance(name, str) or not _NAME.match(name) or name in ("data_base64", "extensions"):
        raise ConfigError(
            f"{name!r} is not an attribute name: a pattern's top-level keys are attributes "
            "(lower-case letters and digits), 'data' or '$or'",
            key=path,
        )
    if not isinstance(spec, list):
        hint = "; nested patterns are for 'data'" if isinstance(spec, Mapping) else ""
        raise ConfigError(
            f"expected a list of values or conditions, got {describe(spec)}{hint}", key=at
        )
    if name in _STRING_CONTEXT and all(type(item) is str for item in spec):
        # The common case, ``"type": ["a", "b"]``: one attribute read and a set lookup.
        _values(spec, at, ctx)  # checked all the same
        get = operator.attrgetter(name)
        allowed = frozenset(spec)
        return lambda event: get(event) in allowed
    match = _values(spec, at, ctx)
    read = attribute_getter(name)
    if not _searches(spec):  # an attribute is never an array: only a search costs more
        return lambda event: match(read(event))
    work, share = ctx.entry()

    def attribute(event: Event) -> bool:
        work.left = share[0]
        return match(read(event))

    return attribute


def _searches(spec: list[Any]) -> bool:
    """Whether a field's list holds a wildcard, which may search the whole value."""
    for item in spec:
        if isinstance(item, Mapping):
            excluded = item.get("anything-but")
            if "wildcard" in item or (isinstance(excluded, Mapping) and "wildcard" in excluded):
                return True
    return False


def _branches(spec: Any, path: str) -> list[Mapping[str, Any]]:
    if not isinstance(spec, list) or not spec:
        raise ConfigError(f"expected a non-empty list of patterns, got {describe(spec)}", key=path)
    for i, branch in enumerate(spec):
        if not isinstance(branch, Mapping) or not branch:
            raise ConfigError(
                f"expected a pattern (a mapping), got {describe(branch)}", key=f"{path}[{i}]"
            )
    return spec


# -- inside data: nested objects and value lists ----------------------------------------


def _node(spec: Any, path: str, ctx: _Context, depth: int) -> Match:
    if isinstance(spec, Mapping):
        return _object(spec, path, ctx, depth)
    if isinstance(spec, list):
        return _values(spec, path, ctx)
    raise ConfigError(
        f"expected a list of values or conditions, or a nested pattern (a mapping), "
        f"got {describe(spec)}",
        key=path,
    )


def _object(pattern: Mapping[str, Any], path: str, ctx: _Context, depth: int) -> Match:
    return _over_value(_fields(pattern, path, ctx, depth), pattern, ctx)


def _fields(pattern: Mapping[str, Any], path: str, ctx: _Context, depth: int) -> Match:
    """A nested pattern's test of one JSON object (a dict): every field, every $or."""
    check_depth(depth, ctx.limits, what="the pattern", where=path)
    if not pattern:
        raise ConfigError("an empty nested pattern; leave the key out instead", key=path)
    checks: list[Match] = []
    alternatives: list[Match] = []
    for key, spec in pattern.items():
        at = join_path(path, key)
        if not isinstance(key, str):
            raise ConfigError(f"JSON member names are strings, got {describe(key)}", key=at)
        if key == "$or":
            branches = [
                _object(branch, f"{at}[{i}]", ctx, depth + 1)
                for i, branch in enumerate(_branches(spec, at))
            ]
            alternatives.append(any_of(branches))
        elif isinstance(spec, list):
            checks.append(_values(spec, at, ctx, member=key))
        else:
            checks.append(_member(key, _node(spec, at, ctx, depth + 1)))
    return all_of(checks + alternatives)


def _member(key: str, match: Match) -> Match:
    return lambda obj: match(obj.get(key, MISSING))


def _over_value(fields: Match, pattern: Mapping[str, Any], ctx: _Context) -> Match:
    """A nested pattern's test of whatever value the event holds there.

    Arrays inside arrays are walked without recursion, so data nested deeper than the
    Python stack is just more elements to look at; each element costs the checks the
    nested pattern makes of it.
    """
    work, weight = ctx.work, _checks(pattern)

    def match(value: Any) -> bool:
        kind = type(value)
        if kind is dict:
            return fields(value)
        if kind is list and value:
            pending = [(value, 0)]
            while pending:
                elements, start = pending.pop()
                end = start + _CHUNK
                if end < len(elements):  # the rest waits: a match may come first
                    pending.append((elements, end))
                    elements = elements[start:end]
                elif start:
                    elements = elements[start:]
                work.left -= len(elements) * weight
                if work.left < 0:
                    return False
                for element in elements:
                    element_kind = type(element)
                    if element_kind is list:
                        if element:
                            pending.append((element, 0))
                        elif fields(_EMPTY):
                            return True
                    elif fields(element if element_kind is dict else _EMPTY):
                        return True
            return False
        return fields(_EMPTY)  # absent, or not an object: every field is absent

    return match


def _checks(spec: Any) -> int:
    """About how many checks a pattern makes of one value: its conditions and fields."""
    count, stack = 0, [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            count += 1
            stack.extend(item.values())
        elif isinstance(item, list):
            count += len(item)
            stack.extend(item)
    return max(1, count)


def _values(spec: Any, path: str, ctx: _Context, member: str | None = None) -> Match:
    """A field's list of allowed values and conditions, ORed.

    The match takes the field's value; with ``member``, it takes the object holding the
    field and reads that member itself (one call fewer on the hot path).
    """
    if not isinstance(spec, list) or not spec:
        raise ConfigError(
            f"expected a non-empty list of values or conditions, got {describe(spec)}", key=path
        )
    exists: set[bool] = set()
    exact: list[Any] = []
    conditions: list[Match] = []
    exclusions: list[Match] = []  # anything-but: what each one excludes
    for i, item in enumerate(spec):
        at = f"{path}[{i}]"
        if isinstance(item, Mapping):
            name, argument = one_operator(item, at)
            at = join_path(at, name)
            if name == "exists":
                if not isinstance(argument, bool):
                    raise ConfigError(f"expected true or false, got {describe(argument)}", key=at)
                exists.add(argument)
            elif name == "anything-but":
                exclusions.append(excluded_by(argument, at, ctx.work))
            else:
                build = OPERATORS[name]
                conditions.append(
                    wildcard(argument, at, ctx.work) if build is wildcard else build(argument, at)
                )
        else:
            exact.append(scalar(item, at))
    if exact:
        conditions.insert(0, exact_values(exact))
    positive = any_of(conditions) if conditions else None
    work, weight = ctx.work, len(conditions) + len(exclusions)
    if positive is not None and not exists and not exclusions:
        # No condition matches a missing value, so MISSING needs no test of its own.
        if member is None:
            return _any_element(positive, work, weight)
        if exact and len(conditions) == 1 and all(type(v) is str for v in exact):
            return _member_in(member, frozenset(exact), work)
        return _member_any_element(member, positive, work, weight)
    present = True in exists
    absent = False in exists

    def match(value: Any) -> bool:
        if value is MISSING:
            return absent
        if present:
            return True
        if type(value) is list:
            # Any element may satisfy a positive condition; anything-but needs every
            # element to be outside what it excludes.
            if positive is not None and _any(positive, value, work, weight):
                return True
            work.left -= len(value) * len(exclusions)
            if work.left < 0:
                return False
            for excluded in exclusions:  # noqa: SIM110 - a loop is 2x faster than a generator
                if value and not any(map(excluded, value)):
                    return True
            return False
        if positive is not None and positive(value):
            return True
        for excluded in exclusions:  # noqa: SIM110 - a loop is 2x faster than a generator
            if not excluded(value):
                return True
        return False

    return match if member is None else _member(member, match)


def _any_element(positive: Match, work: Work, weight: int) -> Match:
    def match(value: Any) -> bool:
        if type(value) is list:
            return _any(positive, value, work, weight)
        return positive(value)

    return match


def _any(test: Match, elements: list[Any], work: Work, weight: int) -> bool:
    """Whether ``test`` holds for an element, taking ``weight`` steps per element tried,
    a chunk at a time; false when the steps run out first."""
    if len(elements) > _CHUNK:
        return any(
            _any(test, elements[start : start + _CHUNK], work, weight)
            for start in range(0, len(elements), _CHUNK)
            if work.left >= 0
        )
    work.left -= len(elements) * weight
    if work.left < 0:
        return False
    for element in elements:  # noqa: SIM110 - a loop is 2x faster than a generator
        if test(element):
            return True
    return False


def _member_any_element(key: str, positive: Match, work: Work, weight: int) -> Match:
    def member(obj: dict[str, Any]) -> bool:
        value = obj.get(key, MISSING)
        if type(value) is list:
            return _any(positive, value, work, weight)
        return positive(value)

    return member


def _member_in(key: str, strings: frozenset[str], work: Work) -> Match:
    def member(obj: dict[str, Any]) -> bool:
        value = obj.get(key)
        if type(value) is str:
            return value in strings
        if type(value) is list:
            work.left -= len(value)
            if work.left < 0:
                return False
            for element in value:
                if type(element) is str and element in strings:
                    return True
        return False

    return member
