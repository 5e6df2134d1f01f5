"""The rules every binary-mode binding shares: attribute values as strings, data as bytes.

Binary mode puts attributes in message headers and the data alone in the body, so two
things must be decided once for HTTP, Kafka and NATS alike:

* **Attribute values.** ``time`` travels as RFC 3339 with ``Z`` for UTC (nine
  fraction digits when it has nanoseconds), booleans as ``true``/``false``, integers in
  decimal. Headers carry no types, so on the way in every extension is a string (the
  CloudEvents spec's canonical string form); ``time`` is parsed back into a datetime
  (a :class:`~eventmesh.event.NanoTime` when it has digits below the microsecond).
* **Data.** ``bytes`` travel as they are, and so does a
  :class:`~eventmesh.event.JSONData` (JSON kept as it arrived) under a JSON content
  type. With a JSON content type (or none, which CloudEvents reads as JSON) any other
  value is JSON-encoded, strings included, so ``"42"`` stays a string; with another
  content type a string travels as UTF-8. On the way in, a body under a JSON content
  type must be JSON (else ``EventValidationError`` on ``data``) and is kept as a
  ``JSONData`` of its very bytes, checked but parsed only when something reads
  ``event.data``; under no content type it is the same when it is JSON and stays bytes
  when not; a ``text/*`` type, or one with a ``charset``, becomes a string; anything
  else stays bytes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from eventmesh.errors import EventValidationError
from eventmesh.event import (
    MAX_DATA_DEPTH,
    Event,
    JSONData,
    check_data_depth,
    format_time,
    is_json_media_type,
    parse_time,
    stored_data,
)

__all__ = [
    "checked_json",
    "decode_attribute",
    "decode_data",
    "encode_attribute",
    "encode_data",
    "is_json_media_type",
]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_checker = msgspec.json.Decoder(msgspec.Raw)  # checks JSON without building objects


def encode_attribute(value: Any) -> str:
    """An attribute value as the string a header carries."""
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_time(value)
    return str(value)


def decode_attribute(name: str, text: str) -> Any:
    """A header string as the attribute value: ``time`` as a datetime, the rest as strings."""
    if name == "time":
        return parse_time(text)
    return text


def encode_data(event: Event) -> bytes:
    """The body of a binary-mode message for ``event``."""
    data = stored_data(event)
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    if type(data) is JSONData:
        if is_json_media_type(event.datacontenttype):
            return data.raw
        data = data.value
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str) and not is_json_media_type(event.datacontenttype):
        return data.encode("utf-8")
    try:
        body = _encoder.encode(data)
    except (TypeError, msgspec.EncodeError, RecursionError) as exc:
        raise EventValidationError(
            f"the data of event {event.id!r} cannot be encoded as JSON: {exc}", attribute="data"
        ) from exc
    check_data_depth(data, body)  # what no binding would read back is not sent
    return body


def decode_data(body: bytes, content_type: str | None, *, wrap: bool = False) -> Any:
    """The data of a binary-mode message with this body and content type.

    A body that is not JSON under a JSON content type, or JSON nested deeper than
    :data:`~eventmesh.event.MAX_DATA_DEPTH`, raises ``EventValidationError`` on
    ``data``; with ``wrap`` (a message being wrapped because it is no CloudEvent) it
    stays bytes instead.
    """
    if not body:
        return None
    if is_json_media_type(content_type):
        raw = bytes(body)
        try:
            checked_json(raw, content_type)
        except EventValidationError:
            if wrap or content_type is None:  # no content type: bytes that are not JSON
                return raw
            raise
        return JSONData(raw)
    media = content_type.split(";", 1)[0].strip().lower() if content_type else ""
    if media.startswith("text/") or "charset=" in (content_type or "").lower():
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(body)
    return bytes(body)


def checked_json(body: bytes, content_type: str | None) -> None:
    """``EventValidationError`` on ``data`` unless ``body`` is one JSON document nested
    at most :data:`~eventmesh.event.MAX_DATA_DEPTH` deep; no object is built for it
    unless its brackets could nest that deep."""
    try:
        _checker.decode(body)
        if not body.isascii():
            body.decode("utf-8")  # the checker skips over the text of strings
        # Each level of nesting takes two bytes: a short body cannot be too deep.
        if len(body) > 2 * MAX_DATA_DEPTH and body.count(b"[") + body.count(b"{") > MAX_DATA_DEPTH:
            check_data_depth(_decoder.decode(body))
    except RecursionError as exc:
        raise EventValidationError(
            "the data nests arrays and objects too deep to read", attribute="data"
        ) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise EventValidationError(
            f"the data is not JSON, as its content type {content_type!r} says it is: "
            f"{exc}; send valid UTF-8 JSON, or a content type that says what the data is "
            "(text/plain, application/octet-stream)",
            attribute="data",
        ) from exc
