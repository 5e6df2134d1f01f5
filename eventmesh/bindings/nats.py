"""The NATS protocol binding: NATS messages (headers + payload) <-> :class:`Event`.

Pure functions, no client library. Both content modes of the CloudEvents NATS binding
(1.0.3) are written and read, and a header-less JSON event (binding 1.0.2) is read too.
:func:`from_message` raises EventValidationError for a message that claims to be a
CloudEvent but is broken, or is JSON nested too deeply to read; :func:`wrap_message`
turns anything that is not a CloudEvent into an event (``io.eventmesh.nats.message``)
rather than dropping it. See docs/nats.md, 'Messages from and to other NATS clients'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote, unquote

import msgspec

from eventmesh._wire import decode_one
from eventmesh.bindings._common import decode_data, encode_attribute, encode_data
from eventmesh.errors import EventValidationError
from eventmesh.event import (
    CONTEXT_ATTRIBUTES,
    MAX_DATA_DEPTH,
    Event,
    check_data_depth,
    data_text,
    decode_json,
    encode_json,
    json_keeps,
    keep_data_text,
    parse_time,
)

__all__ = [
    "MESSAGE_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "from_message",
    "to_binary",
    "to_structured",
    "wrap_message",
]

MESSAGE_TYPE: Final = "io.eventmesh.nats.message"
"""The ``type`` of an event wrapped around a NATS message that is not a CloudEvent."""
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
"""The ``Content-Type`` header of a structured-mode message."""

_PREFIX: Final = "ce-"
_OCTET_STREAM: Final = "application/octet-stream"
_STRUCTURED_HEADERS: Final = {"Content-Type": STRUCTURED_CONTENT_TYPE}
# Printable ASCII (U+0021-U+007E) except '"' and '%': what a header value keeps as it is.
_PLAIN = re.compile(r"[!#$&-~]*\Z")
# quote() leaves letters, digits and "_.-~" alone; these are the rest of the plain set.
_QUOTE_SAFE: Final = "!#$&'()*+,/:;<=>?@[\\]^`{|}"
_OPTIONAL: Final = ("datacontenttype", "dataschema", "subject")
_json = msgspec.json.Decoder()


# -- header values ------------------------------------------------------------------------


def _encode_value(value: Any) -> str:
    text = encode_attribute(value)
    if _PLAIN.match(text):
        return text
    return quote(text, safe=_QUOTE_SAFE, encoding="utf-8", errors="strict")


def _decode_value(name: str, raw: str) -> str:
    text = raw
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        # An RFC 7230 quoted-string (older producers): drop the quotes, undo the escapes.
        text = re.sub(r"\\(.)", r"\1", text[1:-1])
    if "%" not in text:
        return text
    try:
        return unquote(text, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise EventValidationError(
            f"header {_PREFIX}{name} is not percent-encoded UTF-8 ({raw!r}): {exc.reason}",
            attribute=name,
        ) from exc


# -- writing ------------------------------------------------------------------------------


def to_binary(event: Event) -> tuple[dict[str, str], bytes]:
    """The headers and payload of ``event`` in binary content mode."""
    headers = {
        "ce-specversion": event.specversion,
        "ce-id": _encode_value(event.id),
        "ce-source": _encode_value(event.source),
        "ce-type": _encode_value(event.type),
    }
    if event.datacontenttype is not None:
        headers["ce-datacontenttype"] = _encode_value(event.datacontenttype)
    if event.dataschema is not None:
        headers["ce-dataschema"] = _encode_value(event.dataschema)
    if event.subject is not None:
        headers["ce-subject"] = _encode_value(event.subject)
    if event.time is not None:
        headers["ce-time"] = encode_attribute(event.time)
    for name, value in event.extensions.items():
        headers[_PREFIX + name] = _encode_value(value)
    return headers, encode_data(event)


def to_structured(event: Event) -> tuple[dict[str, str], bytes]:
    """The headers and payload of ``event`` in structured content mode (JSON format);
    in binary mode when its JSON data has whitespace around the value, which the format
    would drop (``json_keeps``): a reader tells the modes apart by the content type."""
    if not json_keeps(event):
        return to_binary(event)
    return dict(_STRUCTURED_HEADERS), encode_json(event)


# -- reading ------------------------------------------------------------------------------


def from_message(
    headers: Mapping[str, str] | None,
    payload: bytes,
    *,
    subject: str = "",
    id: str | None = None,
    time: datetime | None = None,
) -> Event:
    """The event a NATS message carries, in either content mode, or the message wrapped.

    ``subject``, ``id`` and ``time`` are used only to wrap a message that is not a
    CloudEvent (see the module docstring). Raises ``EventValidationError`` when the
    message claims to be a CloudEvent and is not a valid one.
    """
    content_type: str | None = None
    attrs: dict[str, str] | None = None
    if headers:
        for key, value in headers.items():
            lower = key.lower()
            if lower.startswith(_PREFIX):
                if attrs is None:
                    attrs = {}
                attrs[lower[3:]] = value
            elif lower == "content-type":
                content_type = value
    if content_type is not None and content_type.lower().startswith("application/cloudevents"):
        return _from_structured(content_type, payload)
    if attrs is not None:
        return _from_binary(attrs, content_type, payload)
    if payload[:1] == b"{" or payload.lstrip()[:1] == b"{":
        event = _from_headerless_json(payload)
        if event is not None:
            return event
    return wrap_message(headers, payload, subject=subject, id=id, time=time)


def _from_structured(content_type: str, payload: bytes) -> Event:
    media = content_type.split(";", 1)[0].strip().lower()
    if media != STRUCTURED_CONTENT_TYPE:
        raise EventValidationError(
            f"structured messages must be {STRUCTURED_CONTENT_TYPE}, got {content_type!r} "
            "(the NATS binding has no batch mode and eventmesh reads only the JSON format)",
            attribute="datacontenttype",
        )
    return decode_json(payload)


def _from_binary(attrs: dict[str, str], content_type: str | None, payload: bytes) -> Event:
    for required in ("specversion", "id", "source", "type"):
        if required not in attrs:
            raise EventValidationError(
                f"binary-mode message has ce- headers but no {_PREFIX}{required}",
                attribute=required,
            )
    values: dict[str, Any] = {}
    extensions: dict[str, Any] = {}
    for name, raw in attrs.items():
        text = _decode_value(name, raw)
        if name in CONTEXT_ATTRIBUTES:
            values[name] = text
        else:
            extensions[name] = text
    raw_time = values.pop("time", None)
    datacontenttype = values.get("datacontenttype", content_type)
    return Event(
        specversion=values["specversion"],
        id=values["id"],
        source=values["source"],
        type=values["type"],
        datacontenttype=datacontenttype,
        dataschema=values.get("dataschema"),
        subject=values.get("subject"),
        time=None if raw_time is None else parse_time(raw_time),
        data=decode_data(payload, datacontenttype),
        extensions=extensions,
    )


def _from_headerless_json(payload: bytes) -> Event | None:
    event = decode_one(payload)  # the typed decoder takes a plain event
    if event is not None:
        return event
    try:
        obj = _json.decode(payload)
    except msgspec.DecodeError:
        return None
    except RecursionError as exc:  # msgspec's answer to JSON nested past the stack
        raise EventValidationError(
            "the message is JSON nested too deeply to read; event data may nest at most "
            f"{MAX_DATA_DEPTH} deep",
            attribute="data",
        ) from exc
    if not isinstance(obj, dict) or "specversion" not in obj:
        return None
    check_data_depth(obj.get("data"), payload)  # as the JSON format's own decoder does
    if "data" in obj:
        keep_data_text(obj, data_text(payload))
    return Event.from_dict(obj)


def wrap_message(
    headers: Mapping[str, str] | None,
    payload: bytes,
    *,
    subject: str = "",
    id: str | None = None,
    time: datetime | None = None,
    error: str | None = None,
) -> Event:
    """An ``io.eventmesh.nats.message`` event around a NATS message (rule above).

    ``error``, when given, is kept in the ``cloudeventerror`` extension: the reason a
    message that claimed to be a CloudEvent could not be read as one.
    """
    content_type = None
    for key, value in (headers or {}).items():
        if key.lower() == "content-type" and value:
            content_type = value
            break
    fields: dict[str, Any] = {}
    if id is not None:
        fields["id"] = id
    if time is not None:
        fields["time"] = time
    return Event(
        type=MESSAGE_TYPE,
        source=f"nats://{subject}",
        datacontenttype=content_type or _OCTET_STREAM,
        data=(
            decode_data(payload, content_type, wrap=True)
            if content_type
            else (bytes(payload) or None)
        ),
        extensions={"cloudeventerror": error} if error else {},
        **fields,
    )
