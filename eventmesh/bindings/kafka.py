"""The CloudEvents Kafka protocol binding: pure functions between Kafka records and events.

Maps an :class:`~eventmesh.event.Event` to and from a record's key, value and headers in
either content mode of the binding (Kafka Protocol Binding 1.0): binary
(:func:`to_binary`, ``ce_`` headers) or structured (:func:`to_structured`). The key is
the ``partitionkey`` extension, which is how per-key order is kept.
:func:`from_message` raises EventValidationError for a record that claims to be a
CloudEvent and breaks the spec; :func:`wrap_message` turns any record that is not one
into an event, so no record is dropped and none blocks its partition. See
docs/kafka.md, 'The record format' and 'Records that are not CloudEvents'.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

import msgspec

from eventmesh.bindings._common import decode_attribute, decode_data, encode_attribute, encode_data
from eventmesh.errors import EventValidationError
from eventmesh.event import (
    _CHECKED,
    SPECVERSION,
    Event,
    ExtensionValue,
    decode_json,
    encode_json,
    json_keeps,
    parse_time,
    stored_data,
)

__all__ = [
    "CE_PREFIX",
    "CONTENT_TYPE",
    "MESSAGE_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "EmptyData",
    "Headers",
    "Message",
    "content_mode",
    "from_message",
    "to_binary",
    "to_structured",
    "wrap_message",
]

Headers: TypeAlias = list[tuple[str, bytes]]
"""Kafka record headers as aiokafka takes and returns them: (name, value) pairs."""

Message: TypeAlias = tuple[bytes | None, bytes | None, Headers]
"""A record as ``(key, value, headers)``."""

EmptyData: TypeAlias = Literal["null", "empty"]
"""The value of a binary-mode record for an event without data: ``null`` (no value, as
the binding says; a tombstone on a compacted topic) or ``empty`` (an empty value)."""

CE_PREFIX: Final = "ce_"
"""The prefix of the header that carries each attribute in binary mode."""
CONTENT_TYPE: Final = "content-type"
"""The header that carries ``datacontenttype`` (binary) or the event format (structured)."""
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
"""The media type of the JSON event format, which marks a structured-mode record."""
MESSAGE_TYPE: Final = "io.eventmesh.kafka.message"
"""The ``type`` given to a record that is not a CloudEvent (see :func:`wrap_message`)."""

_ABSENT: Final[Any] = object()
# The headers _fast_binary reads by name, each into its slot; every one but the last (an
# extension, which must keep its place among the others) is a fixed attribute.
_SLOTS: Final = {
    "ce_specversion": 0,
    "ce_id": 1,
    "ce_source": 2,
    "ce_type": 3,
    "ce_time": 4,
    CONTENT_TYPE: 5,
    "ce_partitionkey": 6,
}
_SLOTTED: Final = frozenset(_SLOTS) - {"ce_partitionkey"}
_STRUCTURED_HEADERS: Final[Headers] = [(CONTENT_TYPE, STRUCTURED_CONTENT_TYPE.encode("ascii"))]
_REQUIRED: Final = ("specversion", "id", "source", "type")


def _key(event: Event) -> bytes | None:
    key = event.partitionkey
    return None if key is None else key.encode("utf-8")


def to_binary(event: Event, *, empty_data: EmptyData = "null") -> Message:
    """The binary-mode record for ``event``: ``(key, value, headers)``.

    ``value`` is None for an event without data, or ``b""`` with ``empty_data="empty"``.
    Raises ``EventValidationError`` when the data cannot be encoded under its content
    type.
    """
    # Written out rather than looped over event.attributes(): this runs once per event
    # on the publish path. The order is the same.
    try:
        headers: Headers = [
            ("ce_specversion", event.specversion.encode()),
            ("ce_id", event.id.encode()),
            ("ce_source", event.source.encode()),
            ("ce_type", event.type.encode()),
        ]
        if event.datacontenttype is not None:
            headers.append((CONTENT_TYPE, event.datacontenttype.encode()))
        if event.dataschema is not None:
            headers.append(("ce_dataschema", event.dataschema.encode()))
        if event.subject is not None:
            headers.append(("ce_subject", event.subject.encode()))
        if event.time is not None:
            headers.append(("ce_time", encode_attribute(event.time).encode()))
        for name, attr in event.extensions.items():
            text = attr if type(attr) is str else encode_attribute(attr)
            headers.append((CE_PREFIX + name, text.encode()))
        key = _key(event)
    except UnicodeEncodeError as exc:
        raise _not_utf8(event, exc) from exc
    if stored_data(event) is not None:
        return key, encode_data(event), headers
    return key, (None if empty_data == "null" else b""), headers


def _not_utf8(event: Event, exc: UnicodeEncodeError) -> EventValidationError:
    return EventValidationError(
        f"an attribute of event {event.id!r} cannot be sent as UTF-8, as Kafka headers "
        f"must be: {exc}"
    )


def to_structured(event: Event) -> Message:
    """The structured-mode record for ``event``: the JSON event format as the value;
    but the binary-mode record when its JSON data has whitespace around the value,
    which the format would drop (``json_keeps``): the record is read back, by us or any
    CloudEvents consumer, by its content type, and keeps every byte.

    Raises ``EventValidationError`` when the event cannot be written as JSON.
    """
    if not json_keeps(event):
        return to_binary(event)
    try:
        return _key(event), encode_json(event), list(_STRUCTURED_HEADERS)
    except UnicodeEncodeError as exc:
        raise _not_utf8(event, exc) from exc
    except (TypeError, msgspec.EncodeError) as exc:
        raise EventValidationError(
            f"the data of event {event.id!r} cannot be encoded as JSON: {exc}", attribute="data"
        ) from exc


def content_mode(
    headers: Iterable[tuple[str, bytes | None]],
) -> Literal["binary", "structured", "foreign"]:
    """How a record with these headers is read: as a binary or structured CloudEvent,
    or as a foreign record to wrap."""
    return _scan(headers)[0]


_STRUCTURED_MEDIA: Final = STRUCTURED_CONTENT_TYPE.encode("ascii")
# The headers nearly every binary record has, by name: one dict lookup instead of case
# folding and prefix tests (any other spelling takes the general path).
_KNOWN: Final = {
    CE_PREFIX + name: name
    for name in ("specversion", "id", "source", "type", "time", "subject", "dataschema")
}


def _scan(
    headers: Iterable[tuple[str, bytes | None]],
) -> tuple[Literal["binary", "structured", "foreign"], dict[str, bytes | None], bytes | None]:
    """One pass over the headers: the mode, the raw ce_ attributes, the content type."""
    attrs: dict[str, bytes | None] = {}
    content_type: bytes | None = None
    known = _KNOWN
    for name, raw in headers:
        attr = known.get(name)
        if attr is None:
            if not name.startswith(CE_PREFIX) or not name.islower():  # names ignore case
                name = name.lower()
                if name == CONTENT_TYPE:
                    content_type = raw
                    continue
                if not name.startswith(CE_PREFIX):
                    continue
            attr = name[3:]
        attrs[attr] = raw
    if content_type is not None:
        media = content_type.split(b";", 1)[0].strip().lower()
        if media == _STRUCTURED_MEDIA:
            return "structured", attrs, content_type
    return ("binary" if attrs else "foreign"), attrs, content_type


def from_message(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]],
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    timestamp: float | None = None,
) -> Event:
    """The event a Kafka record carries, in either content mode.

    A record that is not a CloudEvent is wrapped by :func:`wrap_message`, which needs
    ``topic``, ``partition`` and ``offset`` (``timestamp`` in seconds since the epoch is
    used for its ``time``). Raises ``EventValidationError`` when the record claims to be
    a CloudEvent but is not a valid one, or is foreign and its position is not given.
    """
    if type(headers) is tuple or type(headers) is list:  # what aiokafka hands out
        event = _fast_binary(key, value, headers)
        if event is not None:
            return event
    mode, attrs, content_type = _scan(headers)
    if mode == "binary":
        return _from_binary(key, value, attrs, content_type)
    if mode == "structured":
        return _from_structured(key, value)
    if topic is None or partition is None or offset is None:
        raise EventValidationError(
            "the record is not a CloudEvent (no ce_ headers and no content-type "
            f"{STRUCTURED_CONTENT_TYPE}); pass its topic, partition and offset to wrap it"
        )
    return wrap_message(
        key,
        value,
        headers,
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=timestamp,
    )


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", errors="replace")


def _from_binary(
    key: bytes | None,
    value: bytes | None,
    raw_attrs: dict[str, bytes | None],
    raw_content_type: bytes | None,
) -> Event:
    try:
        attrs = {name: raw.decode() if raw else "" for name, raw in raw_attrs.items()}
        content_type = None if raw_content_type is None else raw_content_type.decode()
    except UnicodeDecodeError as exc:
        bad = next((n for n, raw in raw_attrs.items() if raw and not _is_utf8(raw)), None)
        where = f"header {CE_PREFIX}{bad}" if bad else f"header {CONTENT_TYPE}"
        raise EventValidationError(
            f"{where} is not UTF-8 text, as the Kafka binding requires: {exc}", attribute=bad
        ) from exc
    for required in _REQUIRED:
        if required not in attrs:
            raise EventValidationError(
                f"required attribute {required!r} is missing: the record has ce_ headers "
                f"but no {CE_PREFIX}{required} header",
                attribute=required,
            )
    specversion = attrs.pop("specversion")
    id_ = attrs.pop("id")
    source = attrs.pop("source")
    type_ = attrs.pop("type")
    # Some producers send ce_datacontenttype; the content-type header wins.
    found = attrs.pop("datacontenttype", None)
    if content_type is None:
        content_type = found
    dataschema = attrs.pop("dataschema", None)
    subject = attrs.pop("subject", None)
    time = attrs.pop("time", None)
    extensions: dict[str, ExtensionValue] = dict(attrs)
    if key is not None and "partitionkey" not in extensions:
        extensions["partitionkey"] = _key_text(key)
    return Event(
        specversion=specversion,
        id=id_,
        source=source,
        type=type_,
        datacontenttype=content_type,
        dataschema=dataschema,
        subject=subject,
        time=None if time is None else decode_attribute("time", time),
        data=None if not value else decode_data(value, content_type),
        extensions=extensions,
    )


def _fast_binary(
    key: bytes | None,
    value: bytes | None,
    headers: tuple[tuple[str, bytes | None], ...] | list[tuple[str, bytes | None]],
) -> Event | None:
    """The event of a binary record as nearly every producer writes it, read in one pass
    over the headers, or None to send the record down the general path (:func:`_scan`,
    :func:`_from_binary`), which is several times slower.

    It reads the records whose header names are all lower case, whose required
    attributes are present as UTF-8 and whose ``ce_time`` (if any) has the common RFC
    3339 form, and returns exactly the event the general path returns for them (or
    raises the same ``EventValidationError`` when ``Event`` refuses their values). Every
    other record gets None, so the general path reads it or says what is wrong.
    """
    # The headers nearly every record has go to their slot (the last of a repeated name
    # wins, as in _scan); any other header sends the loop below over them all.
    absent = _ABSENT
    slots = [absent, absent, absent, absent, absent, absent, absent]
    others = False
    slot = _SLOTS.get
    for name, raw in headers:
        index = slot(name)
        if index is None:
            others = True
        else:
            slots[index] = raw
    raw_spec, raw_id, raw_source, raw_ce_type, raw_time, raw_type, raw_key = slots
    if raw_type is absent:
        raw_type = None
    time: str | None = None
    subject = dataschema = found = None
    extensions: dict[str, ExtensionValue] = {}
    try:
        # A missing required header (absent) or one without a value (None) has no
        # decode(): the general path says which.
        specversion = raw_spec.decode()
        id_ = raw_id.decode()
        source = raw_source.decode()
        type_ = raw_ce_type.decode()
        if raw_time is not absent:  # as in _scan, a header without a value reads as ""
            time = raw_time.decode() if raw_time else ""
        content_type = None if raw_type is None else raw_type.decode()
        if not others:
            if raw_key is not absent:
                extensions["partitionkey"] = raw_key.decode() if raw_key else ""
        else:
            for name, raw in headers:  # in order, so the extensions keep the record's
                if name in _SLOTTED:
                    continue
                if name.startswith(CE_PREFIX) and name.islower():
                    text = raw.decode() if raw else ""
                    attr = name[3:]
                    if attr == "subject":
                        subject = text
                    elif attr == "dataschema":
                        dataschema = text
                    elif attr == "datacontenttype":
                        found = text
                    else:
                        extensions[attr] = text
                elif not name.islower():
                    return None  # perhaps a ce_ or content-type header in another case
    except (AttributeError, UnicodeDecodeError):
        return None  # a required header is missing, has no value, or is not UTF-8
    if raw_type is None:
        content_type = found  # some producers send ce_datacontenttype; content-type wins
    elif raw_type.split(b";", 1)[0].strip().lower() == _STRUCTURED_MEDIA:
        return None
    stamp: datetime | None = None
    if time is not None:
        try:
            stamp = parse_time(time)
        except EventValidationError:
            return None  # the general path says what is wrong
    if key is not None and "partitionkey" not in extensions:
        extensions["partitionkey"] = key.decode("utf-8", errors="replace")
    data = decode_data(value, content_type) if value else None
    if (
        specversion == SPECVERSION
        and id_
        and source
        and type_
        and subject != ""
        and dataschema != ""
        and content_type != ""
        and not others  # the only extension is partitionkey, a str: nothing to check
    ):
        # Every field is checked: headers decode to str, id, source and type are not
        # empty, nor is an optional one that is set, and parse_time's time is aware.
        specversion = _CHECKED  # Event skips its own checks
    return Event(
        specversion=specversion,
        id=id_,
        source=source,
        type=type_,
        datacontenttype=content_type,
        dataschema=dataschema,
        subject=subject,
        time=stamp,
        data=data,
        extensions=extensions,
    )


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _from_structured(key: bytes | None, value: bytes | None) -> Event:
    if not value:
        raise EventValidationError(
            f"the record is marked {STRUCTURED_CONTENT_TYPE} but has no value"
        )
    event = decode_json(value)
    if key is not None and "partitionkey" not in event.extensions:
        event = event.replace(extensions={**event.extensions, "partitionkey": _key_text(key)})
    return event


def _time(timestamp: float | None) -> datetime | None:
    """``timestamp`` as a time, or None when there is none or no datetime can hold it."""
    if timestamp is None:
        return None
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def wrap_message(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]],
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp: float | None = None,
    error: str | None = None,
) -> Event:
    """An event for a record that is not a CloudEvent, by the rule in the module docstring.

    ``timestamp`` is the record's timestamp in seconds since the epoch, if known (one
    that no datetime can hold, past year 9999, gives no ``time``); ``error`` why a
    record that claimed to be a CloudEvent could not be read as one.
    """
    content_type: str | None = None
    for name, raw in headers:
        if name.lower() == CONTENT_TYPE and raw is not None:
            content_type = raw.decode("utf-8", errors="replace") or None
    extensions: dict[str, ExtensionValue] = {}
    if key is not None:
        extensions["partitionkey"] = _key_text(key)
    if error is not None:
        extensions["cloudeventerror"] = error
    return Event(
        id=f"{topic}-{partition}-{offset}",
        source=f"kafka://{topic}",
        type=MESSAGE_TYPE,
        time=_time(timestamp),
        datacontenttype=content_type,
        data=decode_data(value or b"", content_type, wrap=True),
        extensions=extensions,
    )
