"""The JSON event format decoded straight into events: the typed fast path.

msgspec decodes a JSON-format event (or a batch of them) into :class:`_Wire`, a Struct
whose field types are the format's rules: ``specversion`` is ``"1.0"``, ``id``,
``source`` and ``type`` are non-empty strings, the optional attributes non-empty
strings or null, ``data`` is kept as its JSON text (a ``msgspec.Raw``: checked, never
built into objects), and the extensions it knows by name (:data:`_EXTENSIONS`) are a
string, a boolean or a 32-bit integer. So what the decoder checked is not checked
again, and no intermediate dict is built, copied and picked apart per event.

It is only a fast path: anything it does not take (an unknown extension name, a
``data_base64`` that is not plain, data nested deep, bytes that are not UTF-8, a type
or value the format refuses) makes :func:`decode_one` and :func:`decode_batch` return
None, and the caller decodes the payload again on the general path
(:func:`eventmesh.event.decode_json`), which takes every event and says what is wrong
with the ones it refuses. Both paths build the same event from the same payload.
"""

from __future__ import annotations

from base64 import b64decode
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from eventmesh.errors import EventValidationError
from eventmesh.event import (
    _CHECKED,
    MAX_DATA_DEPTH,
    Event,
    ExtensionValue,
    JSONData,
    decode_json,
    is_json_media_type,
    parse_time,
)

_Text = Annotated[str, msgspec.Meta(min_length=1)]
_Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
_Extension = str | _Int32 | bool | None


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    """One event in the JSON format, as the decoder checks it (names as in the spec)."""

    specversion: Literal["1.0"]
    id: _Text
    source: _Text
    type: _Text
    datacontenttype: _Text | None = None
    dataschema: _Text | None = None
    subject: _Text | None = None
    time: str | None = None
    data: msgspec.Raw = msgspec.Raw()
    data_base64: str | msgspec.UnsetType | None = msgspec.UNSET
    # The extensions events carry most: ordering, W3C trace context, request-reply.
    partitionkey: _Extension = None
    traceparent: _Extension = None
    tracestate: _Extension = None
    correlationid: _Extension = None
    replyto: _Extension = None


_EXTENSIONS: Final = ("partitionkey", "traceparent", "tracestate", "correlationid", "replyto")
"""The extension names :class:`_Wire` knows; an event with any other takes the general path."""

_one = msgspec.json.Decoder(_Wire)
_many = msgspec.json.Decoder(list[_Wire])
_items = msgspec.json.Decoder(list[msgspec.Raw])
_value = msgspec.json.Decoder()
_SHALLOW: Final = 2 * MAX_DATA_DEPTH
"""Data text no longer than this cannot nest deeper than MAX_DATA_DEPTH (each level takes
an opening and a closing bracket), so it needs no look at its brackets."""


_fromisoformat: Final = datetime.fromisoformat


class _Refused(Exception):
    """An event the fast path leaves to the general one."""


class _Ordered(_Refused):
    """An event with two or more extensions: the order they came in is kept (it is the
    order they are written back in), and only the text says what it was."""


def decode_one(payload: bytes) -> Event | None:
    """The event of JSON-format ``payload``, or None: decode it on the general path."""
    if type(payload) is not bytes or not _plain_text(payload):
        return None
    try:
        return _event(_one.decode(payload))
    except (msgspec.DecodeError, RecursionError, ValueError, _Refused, EventValidationError):
        return None


def decode_batch(payload: bytes) -> list[Event] | None:
    """The events of JSON batch ``payload``, or None: decode it on the general path."""
    if type(payload) is not bytes or not _plain_text(payload):
        return None
    try:
        wires = _many.decode(payload)
        event = _event
        return [event(wire) for wire in wires]
    except _Ordered:
        return _one_by_one(payload)
    except (msgspec.DecodeError, RecursionError, ValueError, _Refused, EventValidationError):
        return None


def _one_by_one(payload: bytes) -> list[Event] | None:
    """The events of a batch that holds an event with several extensions: each decoded
    on its own, so that only such events take the general path."""
    try:
        return [decode_json(bytes(item)) for item in _items.decode(payload)]
    except (msgspec.DecodeError, RecursionError, ValueError, EventValidationError):
        return None  # the caller's general path says which event and what is wrong


def _plain_text(payload: bytes) -> bool:
    """True when ``payload`` is UTF-8: msgspec checks the strings it builds, but not the
    text of ``data`` it keeps raw."""
    if payload.isascii():
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _event(wire: _Wire) -> Event:
    content_type = wire.datacontenttype
    raw = wire.data
    data: Any = None
    if wire.data_base64 is not msgspec.UNSET:
        encoded = wire.data_base64
        if raw:  # both: the general path says which is too many
            raise _Refused
        if encoded is not None:
            try:
                data = b64decode(encoded, validate=True)
            except ValueError:  # binascii.Error: the general path names it
                raise _Refused from None
    elif raw:
        text = bytes(raw)
        if len(text) > _SHALLOW and text.count(b"[") + text.count(b"{") > MAX_DATA_DEPTH:
            raise _Refused  # the general path walks it and names the depth
        if content_type is None or is_json_media_type(content_type):
            data = JSONData(text)
        else:
            data = _value.decode(text)
    extensions: dict[str, ExtensionValue] = {}
    if (
        wire.partitionkey is not None
        or wire.traceparent is not None
        or wire.tracestate is not None
        or wire.correlationid is not None
        or wire.replyto is not None
    ):
        for name in _EXTENSIONS:
            value = getattr(wire, name)
            if value is not None:  # the JSON format reads null as absent
                extensions[name] = value
        if len(extensions) > 1:
            raise _Ordered
    time: Any = wire.time
    if time is not None:
        # parse_time's own fast path, inline: up to microseconds, 'T', a zone.
        if len(time) <= 27 and time[10:11] == "T":
            time = _fromisoformat(time)  # ValueError: the general path says what is wrong
            if time.tzinfo is None:
                raise _Refused
        else:
            time = parse_time(time)
    return Event(
        specversion=_CHECKED,  # every field is checked: Event skips its own checks
        id=wire.id,
        source=wire.source,
        type=wire.type,
        datacontenttype=content_type,
        dataschema=wire.dataschema,
        subject=wire.subject,
        time=time,
        data=data,
        extensions=extensions,
    )
