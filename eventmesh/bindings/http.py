"""The CloudEvents HTTP protocol binding: pure functions between HTTP messages and events.

Maps :class:`~eventmesh.event.Event` objects to and from headers and a body in the three
content modes of the binding (HTTP Protocol Binding 1.0): binary (:func:`to_binary`),
structured (:func:`to_structured`) and batch (:func:`to_batch`); :func:`from_http` reads
any of them. It serves requests and responses alike and knows nothing of any HTTP
library, so ``headers`` may be a plain dict in any spelling or aiohttp's
``CIMultiDictProxy``. Errors are ContentTypeError (415), EventValidationError (400,
naming the attribute) and EventTooLargeError (413); an error about one event of a batch
carries its position as ``exc.index``. See docs/sidecar.md, 'Publishing over HTTP'.

An event without ``datacontenttype`` gets no ``content-type`` header: an HTTP client
that adds one of its own to a bytes body must be told not to (aiohttp:
``skip_auto_headers=("Content-Type",)``), or the receiver reads it as the data's type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import quote, unquote

import msgspec

from eventmesh._wire import decode_batch
from eventmesh.bindings._common import decode_attribute, decode_data, encode_attribute, encode_data
from eventmesh.errors import ContentTypeError, EventTooLargeError, EventValidationError
from eventmesh.event import (
    MAX_DATA_DEPTH,
    Event,
    ExtensionValue,
    check_data_depth,
    data_text,
    data_texts,
    decode_json,
    encode_json,
    encode_json_batch,
    keep_data_text,
)

__all__ = [
    "BATCH_CONTENT_TYPE",
    "CE_PREFIX",
    "CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "ContentMode",
    "HeaderEncoding",
    "content_mode",
    "from_http",
    "from_http_one",
    "to_batch",
    "to_binary",
    "to_structured",
]

ContentMode: TypeAlias = Literal["binary", "structured", "batch"]
"""The content modes of the HTTP binding that eventmesh reads and writes."""

HeaderEncoding: TypeAlias = Literal["spec", "raw"]
"""How :func:`to_binary` writes ``ce-`` header values: ``spec`` percent-encodes as the
binding says; ``raw`` sends the UTF-8 text as it is wherever that is a legal header
value (printable, no leading or trailing space), for receivers that never decode."""

CE_PREFIX: Final = "ce-"
"""The prefix of the header that carries each attribute in binary mode."""
CONTENT_TYPE: Final = "content-type"
"""The header that carries ``datacontenttype`` (binary) or the event format."""
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
"""The media type of the JSON event format, which marks a structured-mode message."""
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
"""The media type of the JSON batch format, which marks a batched-mode message."""

_CLOUDEVENTS_MEDIA: Final = "application/cloudevents"
_REQUIRED: Final = ("specversion", "id", "source", "type")
# A header value keeps printable ASCII (U+0021-U+007E) but '"' and '%' as it is; quote()
# keeps letters, digits and "_.-~" anyway, so these are the rest of that set.
_QUOTE_SAFE: Final = "".join(
    c for c in map(chr, range(0x21, 0x7F)) if not c.isalnum() and c not in '"%_.-~'
)
_decoder = msgspec.json.Decoder()
_raw_decoder = msgspec.json.Decoder(list[msgspec.Raw])


# -- header values ------------------------------------------------------------------------


def _encode_value(name: str, text: str) -> str:
    """``text`` as a header value: percent-encoded where the binding says."""
    # The common case (ids, types, sources, plain strings) in a few C-level checks.
    if (
        text.isascii()
        and text.isprintable()
        and " " not in text
        and '"' not in text
        and "%" not in text
    ):
        return text
    try:
        return quote(text, safe=_QUOTE_SAFE, encoding="utf-8", errors="strict")
    except UnicodeEncodeError as exc:
        raise EventValidationError(
            f"attribute {name!r} cannot be sent as UTF-8, as HTTP header values must be: {exc}",
            attribute=name,
        ) from exc


def _raw_value(name: str, text: str) -> str:
    """``text`` as a header value left as it is (header_encoding ``raw``) when HTTP allows
    that: printable, no space at either end; otherwise percent-encoded as ``spec`` does."""
    if text.isprintable() and text[:1] != " " and text[-1:] != " ":
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: _encode_value refuses it, naming the attribute
        else:
            return text
    return _encode_value(name, text)


def _decode_value(name: str, raw: str) -> str:
    """The text of the ``ce-<name>`` header value ``raw``: unquoted, then percent-decoded."""
    text = raw
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = _unquote_string(text[1:-1])
    try:
        if "%" in text:
            text = unquote(text, encoding="utf-8", errors="strict")
        if not text.isascii():
            text.encode("utf-8")  # refuses lone surrogates (bytes that were not UTF-8)
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise EventValidationError(
            f"header {CE_PREFIX}{name} is not percent-encoded UTF-8 ({raw!r}): {exc.reason}; "
            "percent-encode each UTF-8 byte of a character outside printable ASCII",
            attribute=name,
        ) from exc
    return text


def _unquote_string(inner: str) -> str:
    """The content of an RFC 7230 quoted-string, its backslash escapes undone."""
    if "\\" not in inner:
        return inner
    out: list[str] = []
    escaped = False
    for char in inner:
        if escaped or char != "\\":
            out.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(out)


# -- writing ------------------------------------------------------------------------------


def to_binary(
    event: Event, *, header_encoding: HeaderEncoding = "spec"
) -> tuple[dict[str, str], bytes]:
    """The binary-mode message for ``event``: ``(headers, body)``.

    The body is empty for an event without data. ``header_encoding`` says how header
    values are written (:data:`HeaderEncoding`). Raises ``EventValidationError`` when
    an attribute cannot travel in a header or the data cannot be encoded under its
    content type.
    """
    # Written out rather than looped over event.attributes(): this runs once per event
    # on the delivery path. time, integers and booleans never need percent-encoding.
    encode = _encode_value if header_encoding == "spec" else _raw_value
    headers = {
        "ce-specversion": event.specversion,
        "ce-id": encode("id", event.id),
        "ce-source": encode("source", event.source),
        "ce-type": encode("type", event.type),
    }
    content_type = event.datacontenttype
    if content_type is not None:
        if not (content_type.isascii() and content_type.isprintable()):
            raise EventValidationError(
                f"attribute 'datacontenttype' of event {event.id!r} is {content_type!r}, "
                "which cannot travel in an HTTP Content-Type header: use a media type of "
                "printable ASCII",
                attribute="datacontenttype",
            )
        headers[CONTENT_TYPE] = content_type
    if event.dataschema is not None:
        headers["ce-dataschema"] = encode("dataschema", event.dataschema)
    if event.subject is not None:
        headers["ce-subject"] = encode("subject", event.subject)
    if event.time is not None:
        headers["ce-time"] = encode_attribute(event.time)
    for name, value in event.extensions.items():
        headers[CE_PREFIX + name] = (
            encode(name, value)
            if type(value) is str or isinstance(value, str)  # a typed string: its text
            else encode_attribute(value)
        )
    return headers, encode_data(event)


def to_structured(event: Event) -> tuple[dict[str, str], bytes]:
    """The structured-mode message for ``event``: the JSON event format as the body.

    Raises ``EventValidationError`` when the event cannot be written as JSON.
    """
    return {CONTENT_TYPE: STRUCTURED_CONTENT_TYPE}, _encode_one(event)


def _encode_one(event: Event) -> bytes:
    try:
        return encode_json(event)
    except UnicodeEncodeError as exc:
        raise EventValidationError(
            f"event {event.id!r} holds text that is not valid Unicode, so it cannot be "
            f"written as JSON: {exc}"
        ) from exc
    except (TypeError, msgspec.EncodeError) as exc:
        raise EventValidationError(
            f"the data of event {event.id!r} cannot be encoded as JSON: {exc}", attribute="data"
        ) from exc


def to_batch(events: Sequence[Event]) -> tuple[dict[str, str], bytes]:
    """The batched-mode message for ``events``: a JSON array of events in the JSON format.

    Raises ``EventValidationError`` (with ``index``) when an event cannot be written as
    JSON.
    """
    items = events if isinstance(events, list) else list(events)
    try:
        body = encode_json_batch(items)
    except (UnicodeEncodeError, TypeError, msgspec.EncodeError):
        for index, event in enumerate(items):  # only to say which event it was
            try:
                _encode_one(event)
            except EventValidationError as exc:
                raise exc.in_batch(index) from exc
        raise
    return {CONTENT_TYPE: BATCH_CONTENT_TYPE}, body


# -- telling modes apart ------------------------------------------------------------------


# The ce- headers nearly every binary request has, as they are usually spelled (lower
# case, and Go's canonical "Ce-Id" form): one dict lookup instead of case folding and a
# prefix test. Any other spelling takes the general path.
_KNOWN: Final = {
    spelled: name
    for name in (
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "dataschema",
        "partitionkey",
        "traceparent",
        "tracestate",
    )
    for spelled in (CE_PREFIX + name, "Ce-" + name.capitalize())
}


def _scan(headers: Mapping[str, str]) -> tuple[str | None, dict[str, str]]:
    """One pass over the headers: the Content-Type and the raw ``ce-`` values by name."""
    content_type: str | None = None
    attrs: dict[str, str] = {}
    known = _KNOWN
    for name, value in headers.items():
        attr = known.get(name)
        if attr is None:
            lower = name.lower()
            if not lower.startswith(CE_PREFIX):
                if lower == CONTENT_TYPE:
                    content_type = value
                continue
            attr = lower[3:]
        attrs[attr] = value
    return content_type, attrs


def _detect(content_type: str | None, attrs: dict[str, str]) -> ContentMode:
    """The mode of a message, or ContentTypeError saying why it has none we read."""
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media.startswith(_CLOUDEVENTS_MEDIA):
            if media == STRUCTURED_CONTENT_TYPE:
                return "structured"
            if media == BATCH_CONTENT_TYPE:
                return "batch"
            raise ContentTypeError(
                f"Content-Type {content_type!r} is a CloudEvents event format eventmesh does "
                f"not read: send {STRUCTURED_CONTENT_TYPE}, {BATCH_CONTENT_TYPE}, or the "
                "event in binary mode (ce- headers)"
            )
    if attrs:
        return "binary"
    raise ContentTypeError(
        f"not a CloudEvent: send ce- headers (binary mode) or Content-Type "
        f"{STRUCTURED_CONTENT_TYPE} (got Content-Type {content_type!r} and no ce- headers)"
    )


def content_mode(headers: Mapping[str, str]) -> ContentMode | None:
    """The content mode of a message with these headers, or None when it is not one this
    binding reads (:func:`from_http` says why).

    Any ``ce-`` header makes a message binary, so one without ``ce-specversion`` is
    binary too: reading it then names the missing attribute.
    """
    content_type, attrs = _scan(headers)
    try:
        return _detect(content_type, attrs)
    except ContentTypeError:
        return None


# -- reading ------------------------------------------------------------------------------


def from_http(
    headers: Mapping[str, str], body: bytes, *, max_event_size: int | None = None
) -> list[Event]:
    """The events an HTTP message carries: one in binary or structured mode, any number
    (zero included) in batched mode.

    ``max_event_size`` is the largest event accepted, in bytes (see the module docstring
    for what counts); None for no limit. Raises ``ContentTypeError``,
    ``EventValidationError`` or ``EventTooLargeError`` as the module docstring says.
    """
    content_type, attrs = _scan(headers)
    mode = _detect(content_type, attrs)
    try:
        if mode == "batch":
            return _from_batch(body, max_event_size)
        if mode == "structured":
            return [_from_structured(body, max_event_size)]
        return [_from_binary(attrs, content_type, body, max_event_size)]
    except (UnicodeDecodeError, RecursionError) as exc:
        raise _undecodable(exc) from exc


def from_http_one(
    headers: Mapping[str, str], body: bytes, *, max_event_size: int | None = None
) -> Event:
    """The one event a binary or structured HTTP message carries.

    As :func:`from_http`, and a batch raises ``ContentTypeError``.
    """
    content_type, attrs = _scan(headers)
    mode = _detect(content_type, attrs)
    if mode == "batch":
        raise ContentTypeError(
            f"a batch ({BATCH_CONTENT_TYPE}) is not accepted here: send one event, in "
            f"binary mode (ce- headers) or as {STRUCTURED_CONTENT_TYPE}"
        )
    try:
        if mode == "structured":
            return _from_structured(body, max_event_size)
        return _from_binary(attrs, content_type, body, max_event_size)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise _undecodable(exc) from exc


def _undecodable(exc: BaseException) -> EventValidationError:
    """msgspec raises these, not DecodeError, for bytes that are not UTF-8 and for JSON
    nested deeper than Python's recursion limit."""
    if isinstance(exc, RecursionError):
        # Only data can nest: the envelope of an event, or a batch of them, is 1-2 deep.
        return EventValidationError(
            f"the body is JSON nested too deeply to read; event data may nest at most "
            f"{MAX_DATA_DEPTH} deep",
            attribute="data",
        )
    return EventValidationError(f"the body is not valid UTF-8: {exc}")


def _too_large(what: str, size: int, limit: int) -> EventTooLargeError:
    return EventTooLargeError(
        f"{what} is {size} bytes, above the limit of {limit} bytes (max_event_size): "
        "send smaller events, or keep large payloads elsewhere and send a reference"
    )


def _from_binary(
    attrs: dict[str, str], content_type: str | None, body: bytes, max_event_size: int | None
) -> Event:
    if max_event_size is not None:
        size = len(body) + sum(len(name) + len(raw) + 3 for name, raw in attrs.items())
        if content_type is not None:
            size += len(CONTENT_TYPE) + len(content_type)
        if size > max_event_size:
            raise _too_large("the event (body and ce- headers)", size, max_event_size)
    for required in _REQUIRED:
        if required not in attrs:
            raise EventValidationError(
                f"required attribute {required!r} is missing: the request has ce- headers "
                f"but no {CE_PREFIX}{required} header",
                attribute=required,
            )
    values: dict[str, str] = {}
    for name, raw in attrs.items():
        if "%" in raw or '"' in raw or not raw.isascii():
            raw = _decode_value(name, raw)
        values[name] = raw
    specversion = values.pop("specversion")
    id_ = values.pop("id")
    source = values.pop("source")
    type_ = values.pop("type")
    # The binding forbids ce-datacontenttype; some producers send it. Content-Type wins.
    found = values.pop("datacontenttype", None)
    if content_type is None:
        content_type = found
    if content_type is not None and not (content_type.isascii() and content_type.isprintable()):
        # It could never be sent on as a header, so refuse it now rather than store an
        # event no binary-mode sink can receive.
        raise EventValidationError(
            f"Content-Type {content_type!r} is not printable ASCII; send a media type "
            "such as application/json",
            attribute="datacontenttype",
        )
    dataschema = values.pop("dataschema", None)
    subject = values.pop("subject", None)
    time = values.pop("time", None)
    extensions: dict[str, ExtensionValue] = dict(values)
    return Event(
        specversion=specversion,
        id=id_,
        source=source,
        type=type_,
        datacontenttype=content_type,
        dataschema=dataschema,
        subject=subject,
        time=None if time is None else decode_attribute("time", time),
        data=None if not body else decode_data(body, content_type),
        extensions=extensions,
    )


def _from_structured(body: bytes, max_event_size: int | None) -> Event:
    if max_event_size is not None and len(body) > max_event_size:
        raise _too_large("the event", len(body), max_event_size)
    if not body:
        raise EventValidationError(
            f"the request is marked {STRUCTURED_CONTENT_TYPE} but its body is empty: send "
            "the event in the JSON format"
        )
    return decode_json(body)


def _from_batch(body: bytes, max_event_size: int | None) -> list[Event]:
    objs: list[Any]
    if max_event_size is None or len(body) <= max_event_size:
        # The typed decoder takes a batch of plain events; it leaves the rest to this.
        fast = decode_batch(body)
        if fast is not None:
            return fast
        # No event can be larger than the whole body: parse the array in one go.
        try:
            parsed = _decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise EventValidationError(f"the batch is not valid JSON: {exc}") from exc
        if not isinstance(parsed, list):
            raise _not_an_array(parsed)
        objs = parsed
    else:
        # Split the array without decoding its items, so each one's size is known.
        try:
            raws = _raw_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise _not_an_array(_decoder.decode(body)) from exc
        except msgspec.DecodeError as exc:
            raise EventValidationError(f"the batch is not valid JSON: {exc}") from exc
        objs = []
        for index, raw in enumerate(raws):
            if len(raw) > max_event_size:
                err = _too_large(f"event {index} of the batch", len(raw), max_event_size)
                err.index = index
                raise err
            obj = _decoder.decode(raw)
            if type(obj) is dict and "data" in obj:
                keep_data_text(obj, data_text(raw))
            objs.append(obj)
    events: list[Event] = []
    append = events.append
    from_dict = Event.from_dict
    # Too few brackets in the whole body to nest that deep: no event's data needs a walk.
    deep = body.count(b"[") + body.count(b"{") > MAX_DATA_DEPTH + 2
    whole = max_event_size is None or len(body) <= max_event_size
    texts = data_texts(objs, body) if whole else None  # else kept as each was split off
    for index, obj in enumerate(objs):
        try:
            if type(obj) is dict:
                if deep:
                    check_data_depth(obj.get("data"))
                if texts:
                    keep_data_text(obj, texts[index])
            append(from_dict(obj))  # checks that obj is an object
        except EventValidationError as exc:
            raise exc.in_batch(index) from exc
    return events


_JSON_TYPES: Final = {dict: "an object", str: "a string", int: "a number", float: "a number"}


def _not_an_array(value: Any) -> EventValidationError:
    got = _JSON_TYPES.get(type(value), "true, false or null")
    return EventValidationError(
        f"a CloudEvents batch ({BATCH_CONTENT_TYPE}) must be a JSON array of events, got {got}"
    )
