"""The rules every binary-mode binding shares: attribute values as strings, data as bytes.

Binary mode puts attributes in message headers and the data alone in the body, so two
things must be decided once for HTTP, Kafka and NATS alike:

* **Attribute values.** ``time`` travels as RFC 3339 with ``Z`` for UTC, booleans as
  ``true``/``false``, integers in decimal. Headers carry no types, so on the way in
  every extension is a string (the CloudEvents spec's canonical string form); ``time``
  is parsed back into a datetime.
* **Data.** ``bytes`` travel as they are. With a JSON content type (or none, which
  CloudEvents reads as JSON) any other value is JSON-encoded, strings included, so
  ``"42"`` stays a string; with another content type a string travels as UTF-8. On
  the way in, a JSON content type (or none) is parsed as JSON when it parses; a
  ``text/*`` type, or one with a ``charset``, becomes a string; anything else stays
  bytes. A body that is not valid JSON under no content type stays bytes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from eventmesh.errors import EventValidationError
from eventmesh.event import Event, check_data_depth, parse_time

__all__ = [
    "decode_attribute",
    "decode_data",
    "encode_attribute",
    "encode_data",
    "is_json_media_type",
]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def is_json_media_type(content_type: str | None) -> bool:
    """True for no content type, ``application/json``, ``text/json`` and ``*+json``."""
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def encode_attribute(value: Any) -> str:
    """An attribute value as the string a header carries."""
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    return str(value)


def decode_attribute(name: str, text: str) -> Any:
    """A header string as the attribute value: ``time`` as a datetime, the rest as strings."""
    if name == "time":
        return parse_time(text)
    return text


def encode_data(event: Event) -> bytes:
    """The body of a binary-mode message for ``event``."""
    data = event.data
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
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

    JSON nested deeper than :data:`~eventmesh.event.MAX_DATA_DEPTH` raises
    ``EventValidationError`` on ``data``; with ``wrap`` (a message being wrapped because
    it is no CloudEvent) it stays bytes instead.
    """
    if not body:
        return None
    if is_json_media_type(content_type):
        try:
            data = _decoder.decode(body)
            check_data_depth(data, body)
            return data
        except EventValidationError:
            if wrap:
                return bytes(body)
            raise
        except RecursionError as exc:
            if wrap:
                return bytes(body)
            raise EventValidationError(
                "the data nests arrays and objects too deep to read", attribute="data"
            ) from exc
        except msgspec.DecodeError:
            if content_type is None:
                return bytes(body)
            try:
                return bytes(body).decode("utf-8")
            except UnicodeDecodeError:
                return bytes(body)
    media = content_type.split(";", 1)[0].strip().lower() if content_type else ""
    if media.startswith("text/") or "charset=" in (content_type or "").lower():
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(body)
    return bytes(body)
