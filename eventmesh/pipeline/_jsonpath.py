"""A small JSONPath subset, and the JSON-format view of an event it reads.

Definite paths only (``$``, ``$.a.b``, ``$['a.b']``, ``$.items[0]``), compiled once into
a getter that returns :data:`MISSING` when the path leads nowhere. Also the helpers the
filter, pattern and transform compilers share for error messages (:func:`join_path`,
:func:`describe`). See docs/filters.md, 'JSONPath'.

Why not a library: jsonpath-ng and python-jsonpath took 5.5 µs and 10 µs per lookup of
``$.data.customer.id`` against about 0.1 µs here (jsonpath-ng also 3.5 ms to compile),
and a transform needs only these forms.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, TypeAlias

import msgspec

from eventmesh.bindings import is_json_media_type
from eventmesh.errors import ConfigError
from eventmesh.event import CONTEXT_ATTRIBUTES, Event, JSONData, format_time, stored_data

__all__ = [
    "MISSING",
    "Getter",
    "attribute_getter",
    "compile_event_path",
    "compile_path",
    "describe",
    "join_path",
    "json_data",
    "parse_path",
    "rfc3339",
]


class _Missing:
    """The one value a getter returns when a path leads nowhere."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final[Any] = _Missing()
"""What a getter returns for a path that leads nowhere (unlike ``None``, a JSON null)."""

Getter: TypeAlias = Callable[[Any], Any]
"""Takes a document (or an event, for event paths); returns the value or MISSING."""

Step: TypeAlias = str | int

_MEMBER = re.compile(r"\.([A-Za-z0-9_-]+)")
_INDEX = re.compile(r"\[(-?[0-9]+)\]")
_QUOTED = re.compile(r"""\[(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\]""")
_ESCAPE = re.compile(r"\\(.)")
_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*\Z")
_LONGEST_INDEX: Final = 18
"""Digits of an array index: a list holds fewer than 2**63 elements."""


def parse_path(text: str) -> tuple[Step, ...]:
    """The steps of a path: member names (str) and array indices (int).

    Raises ValueError, saying what is wrong and where, for anything outside the subset.
    """
    if not isinstance(text, str) or not text.startswith("$"):
        raise ValueError(f"a JSONPath starts with '$', got {text!r}")
    steps: list[Step] = []
    pos = 1
    while pos < len(text):
        if m := _MEMBER.match(text, pos):
            steps.append(m.group(1))
        elif m := _INDEX.match(text, pos):
            if len(m.group(1).lstrip("-0")) > _LONGEST_INDEX:
                raise ValueError(
                    f"the JSONPath's index at column {pos + 1} has {len(m.group(1))} "
                    "digits; no array is that long"
                )
            steps.append(int(m.group(1)))
        elif m := _QUOTED.match(text, pos):
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            steps.append(_ESCAPE.sub(r"\1", raw))
        else:
            raise ValueError(
                f"JSONPath {text!r} is not supported at column {pos + 1}: use $.name, "
                "$['name'] or $.name[0] (no wildcards, slices or filters)"
            )
        pos = m.end()
    return tuple(steps)


def compile_path(steps: tuple[Step, ...]) -> Getter:
    """A getter for these steps over a JSON document (dicts, lists and scalars)."""
    if not steps:
        return _identity
    if len(steps) == 1 and type(steps[0]) is str:
        key = steps[0]

        def member(doc: Any) -> Any:
            return doc.get(key, MISSING) if type(doc) is dict else MISSING

        return member

    def walk(doc: Any) -> Any:
        for step in steps:
            if isinstance(step, str):
                if type(doc) is not dict:
                    return MISSING
                doc = doc.get(step, MISSING)
                if doc is MISSING:
                    return MISSING
            else:
                if type(doc) is not list:
                    return MISSING
                try:
                    doc = doc[step]
                except IndexError:
                    return MISSING
        return doc

    return walk


def _identity(doc: Any) -> Any:
    return doc


def compile_event_path(text: str, *, where: str) -> Callable[[Event], Any]:
    """A getter over an event's JSON-format view; ConfigError (naming ``where``) if invalid."""
    try:
        steps = parse_path(text)
    except ValueError as exc:
        raise ConfigError(str(exc), key=where) from None
    if not steps:
        return _whole_event
    head, rest = steps[0], steps[1:]
    if type(head) is not str:
        raise ConfigError(
            f"JSONPath {text!r}: an event is an object, so the path starts with a member "
            "such as $.data or $.subject",
            key=where,
        )
    inner = compile_path(rest)
    if head == "data":
        if not rest:
            return json_data

        def from_data(event: Event) -> Any:
            data = json_data(event)
            return MISSING if data is MISSING else inner(data)

        return from_data
    if head == "data_base64":

        def from_base64(event: Event) -> Any:
            data = event.data
            if isinstance(data, bytes | bytearray | memoryview) and json_data(event) is data:
                return inner(base64.b64encode(data).decode("ascii"))
            return MISSING

        return from_base64
    get = attribute_getter(head)
    if not rest:
        return get
    return lambda event: inner(get(event))


def _whole_event(event: Event) -> Any:
    obj = event.to_dict()
    data = json_data(event)
    if data is not MISSING and data is not event.data:  # decoded from text or bytes
        obj.pop("data_base64", None)
        obj["data"] = data
    return obj


def rfc3339(value: datetime) -> str:
    """A timestamp as the JSON format writes it (``Z`` for UTC, nanoseconds kept)."""
    return format_time(value)


def attribute_getter(name: str) -> Callable[[Event], Any]:
    """A getter for one attribute as the JSON format shows it; MISSING when not set."""
    if name == "time":

        def time(event: Event) -> Any:
            value = event.time
            return MISSING if value is None else rfc3339(value)

        return time
    if name in CONTEXT_ATTRIBUTES:

        def context(event: Event) -> Any:
            value = getattr(event, name)
            return MISSING if value is None else value

        return context

    def extension(event: Event) -> Any:
        return event.extensions.get(name, MISSING)

    return extension


# -- data as a JSON value ----------------------------------------------------------------

_decoder = msgspec.json.Decoder()
_JSON_TEXT = re.compile(r"\s*[{\[]")
_last: tuple[Event | None, Any] = (None, MISSING)


def json_data(event: Event) -> Any:
    """The event's data as a JSON value, or MISSING when it has none.

    A JSON value (dict, list, number, bool) is itself. Text or bytes holding a JSON
    document are decoded when ``datacontenttype`` is set and says JSON: bytes when they
    parse, text when it parses and starts with ``{`` or ``[`` (other text, such as
    ``"5"``, is the JSON string it already is). Anything else is returned as it is: text
    of another media type matches string conditions, bytes that are not JSON match none.
    So is text or bytes that does not decode, also when it nests too deeply to decode.

    The last decoded event is remembered, so every filter and transform that looks at
    the same event's data shares one decode, and a pattern that never reads ``data``
    never pays for it. The memo is one tuple replaced whole, so threads sharing it at
    worst decode twice; the decoded value is shared and must not be changed.
    """
    global _last
    data = stored_data(event)  # the slot itself: cheaper than the event.data property
    if type(data) is JSONData:
        data = data.value
    kind = type(data)
    if kind is dict or kind is list:
        return data
    if data is None:
        return MISSING
    if kind is str:
        if not _JSON_TEXT.match(data):
            return data
    elif not isinstance(data, bytes | bytearray | memoryview):
        return data
    content_type = event.datacontenttype
    if content_type is None or not is_json_media_type(content_type):
        return data
    last = _last
    if last[0] is event:
        return last[1]
    try:
        value = _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):  # nested past the stack: unreadable too
        value = data
    _last = (event, value)
    return value


# -- paths inside a spec, for error messages ---------------------------------------------


def join_path(path: str, name: Any) -> str:
    """``path.name``, or ``path['odd name']`` when the name is not a plain word."""
    if isinstance(name, str) and _PLAIN_KEY.match(name):
        return f"{path}.{name}" if path else name
    return f"{path}[{name!r}]"


def describe(value: Any) -> str:
    """A short description of a config value for an error message (``a list``, ``int 5``)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value!r}" if value else "an empty string"
    if isinstance(value, bool | int | float):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, Sequence):
        return "a list" if value else "an empty list"
    return type(value).__name__
