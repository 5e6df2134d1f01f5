"""The CloudEvents protobuf format: pure functions between ``io.cloudevents.v1`` messages
and events.

The schema is the official one (``eventmesh/_proto/io/cloudevents/v1/cloudevents.proto``,
Protobuf Event Format 1.0). Unlike the binary-mode bindings the format is typed, so
extensions keep their kinds (typed strings such as :class:`~eventmesh.event.URI` come
back as the kind they came as) and ``time`` its nanoseconds; the data travels as
``binary_data``, ``text_data`` or ``proto_data``. Anything that breaks the spec raises
EventValidationError naming the attribute. See docs/sidecar.md, 'gRPC', and
'Every event arrives as it was sent'.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp as ProtoTimestamp

from eventmesh._generated.io.cloudevents.v1.cloudevents_pb2 import CloudEvent, CloudEventBatch
from eventmesh.bindings._common import checked_json, encode_attribute, is_json_media_type
from eventmesh.errors import EventValidationError
from eventmesh.event import (
    _CHECKED,
    SPECVERSION,
    URI,
    Binary,
    Event,
    ExtensionValue,
    JSONData,
    NanoTime,
    Timestamp,
    URIRef,
    parse_time,
    stored_data,
)

__all__ = [
    "BATCH_CONTENT_TYPE",
    "CONTENT_TYPE",
    "PROTOBUF_DATA_CONTENT_TYPE",
    "CloudEvent",
    "CloudEventBatch",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "from_proto",
    "from_proto_batch",
    "to_proto",
    "to_proto_batch",
]

CONTENT_TYPE: Final = "application/cloudevents+protobuf"
"""The media type of one event in the protobuf format."""
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+protobuf"
"""The media type of a ``CloudEventBatch``."""
PROTOBUF_DATA_CONTENT_TYPE: Final = "application/protobuf"
"""The ``datacontenttype`` of data that is itself a protobuf message."""

_AttributeValue = CloudEvent.CloudEventAttributeValue
_STRINGS: Final = frozenset({"ce_string", "ce_uri", "ce_uri_ref"})
_REQUIRED_FIELDS: Final = frozenset({"id", "source", "specversion", "type"})
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


# -- Event -> CloudEvent ------------------------------------------------------------------


def to_proto(event: Event) -> CloudEvent:
    """The ``io.cloudevents.v1.CloudEvent`` for ``event``.

    Raises ``EventValidationError`` when the data cannot be encoded (not JSON-encodable
    under a JSON content type) or an attribute does not fit the format.
    """
    msg = CloudEvent(
        id=event.id, source=event.source, spec_version=event.specversion, type=event.type
    )
    attrs = msg.attributes
    if event.datacontenttype is not None:
        attrs["datacontenttype"].ce_string = event.datacontenttype
    if event.dataschema is not None:
        attrs["dataschema"].ce_uri = event.dataschema
    if event.subject is not None:
        attrs["subject"].ce_string = event.subject
    if event.time is not None:
        _set_time(attrs["time"].ce_timestamp, event.time, event, "time")
    for name, value in event.extensions.items():
        if type(value) is str:
            attrs[name].ce_string = value
        elif isinstance(value, str):
            _set_typed(attrs[name], name, value, event)
        elif isinstance(value, bool):  # before int: a bool is an int
            attrs[name].ce_boolean = value
        else:
            attrs[name].ce_integer = value
    if stored_data(event) is not None:
        _set_data(msg, event)
    return msg


def _set_time(stamp: ProtoTimestamp, value: datetime, event: Event, name: str) -> None:
    try:
        stamp.FromDatetime(value)
    except (ValueError, OverflowError) as exc:
        raise EventValidationError(
            f"attribute {name!r} of event {event.id!r} cannot be a protobuf Timestamp: {exc}",
            attribute=name,
        ) from exc
    if type(value) is NanoTime:
        stamp.nanos += value.extra_nanos


def _set_typed(attr: Any, name: str, value: str, event: Event) -> None:
    """A typed extension string as the kind it is."""
    kind = type(value)
    if kind is URI:
        attr.ce_uri = str(value)
    elif kind is URIRef:
        attr.ce_uri_ref = str(value)
    elif kind is Timestamp:
        _set_time(attr.ce_timestamp, parse_time(str(value)), event, name)
    elif kind is Binary:
        attr.ce_bytes = Binary.to_bytes(value)  # type: ignore[arg-type]  # kind is Binary
    else:
        attr.ce_string = str(value)


def _set_data(msg: CloudEvent, event: Event) -> None:
    data = stored_data(event)
    content_type = event.datacontenttype
    if type(data) is JSONData:
        if is_json_media_type(content_type):
            try:
                msg.text_data = data.raw.decode("utf-8")  # checked as UTF-8 on the way in
                return
            except UnicodeDecodeError:
                pass  # made by hand from bytes that are not UTF-8: encode the value
        data = data.value
    if isinstance(data, bytes | bytearray | memoryview):
        if (
            event.dataschema is not None
            and content_type is not None
            and content_type.split(";", 1)[0].strip().lower() == PROTOBUF_DATA_CONTENT_TYPE
        ):
            msg.proto_data.CopyFrom(AnyMessage(type_url=event.dataschema, value=bytes(data)))
        else:
            msg.binary_data = bytes(data)
        return
    if type(data) is str and not is_json_media_type(content_type):
        msg.text_data = data
        return
    try:
        msg.text_data = _encoder.encode(data).decode("utf-8")
    except (TypeError, msgspec.EncodeError) as exc:
        raise EventValidationError(
            f"the data of event {event.id!r} cannot be encoded as JSON: {exc}", attribute="data"
        ) from exc


def to_proto_batch(events: Iterable[Event]) -> CloudEventBatch:
    """The ``CloudEventBatch`` of ``events``, in order."""
    return CloudEventBatch(events=[to_proto(event) for event in events])


def encode(event: Event) -> bytes:
    """``event`` serialized in the protobuf format (``application/cloudevents+protobuf``)."""
    return to_proto(event).SerializeToString()


def encode_batch(events: Iterable[Event]) -> bytes:
    """``events`` serialized as a ``CloudEventBatch``."""
    return to_proto_batch(events).SerializeToString()


# -- CloudEvent -> Event ------------------------------------------------------------------


def from_proto(msg: CloudEvent) -> Event:
    """The event an ``io.cloudevents.v1.CloudEvent`` carries.

    Raises ``EventValidationError``, naming the attribute, when it is not a valid
    CloudEvents 1.0 event.
    """
    id_ = msg.id
    source = msg.source
    specversion = msg.spec_version
    type_ = msg.type
    if not (id_ and source and specversion and type_):
        _missing(msg)
    datacontenttype: str | None = None
    dataschema: str | None = None
    subject: str | None = None
    time: datetime | None = None
    extensions: dict[str, ExtensionValue] = {}
    attributes = msg.attributes
    if attributes:
        for name in attributes:  # the map itself: its items() view is Python, per item
            value = attributes[name]
            kind = value.WhichOneof("attr")
            if kind is None:
                raise EventValidationError(f"attribute {name!r} has no value", attribute=name)
            if name == "time":
                time = _time(value, kind)
            elif name == "datacontenttype":
                datacontenttype = _string(name, value, kind)
            elif name == "dataschema":
                dataschema = _string(name, value, kind)
            elif name == "subject":
                subject = _string(name, value, kind)
            elif name in _REQUIRED_FIELDS:
                raise EventValidationError(
                    f"attribute {name!r} belongs in the CloudEvent's own field, not in its "
                    "attributes map",
                    attribute=name,
                )
            else:
                extensions[name] = _extension(name, value, kind)
    data: Any = None
    which = msg.WhichOneof("data")
    if which == "binary_data":
        data = msg.binary_data
    elif which == "text_data":
        data = _text(msg.text_data, datacontenttype)
    elif which == "proto_data":
        data = msg.proto_data.value
        datacontenttype = datacontenttype or PROTOBUF_DATA_CONTENT_TYPE
        dataschema = dataschema or msg.proto_data.type_url or None
    if (
        specversion == SPECVERSION
        and datacontenttype != ""
        and dataschema != ""
        and subject != ""
        and not extensions
    ):
        # Every field is checked: protobuf strings are str, id, source and type are not
        # empty, nor is an optional one that is set, and time is an aware datetime.
        specversion = _CHECKED  # Event skips its own checks
    return Event(
        id=id_,
        source=source,
        specversion=specversion,
        type=type_,
        datacontenttype=datacontenttype,
        dataschema=dataschema,
        subject=subject,
        time=time,
        data=data,
        extensions=extensions,
    )


def _missing(msg: CloudEvent) -> None:
    """EventValidationError naming the first required attribute ``msg`` lacks."""
    for name, required in (
        ("id", msg.id),
        ("source", msg.source),
        ("specversion", msg.spec_version),
        ("type", msg.type),
    ):
        if not required:
            raise EventValidationError(
                f"required attribute {name!r} is missing or empty", attribute=name
            )


def _string(name: str, value: Any, kind: str) -> str:
    if kind not in _STRINGS:
        raise EventValidationError(
            f"attribute {name!r} must be a string (ce_string), got {kind}", attribute=name
        )
    text: str = getattr(value, kind)
    return text


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _datetime(stamp: ProtoTimestamp) -> datetime:
    """``stamp`` as an aware UTC datetime, to the nanosecond (a NanoTime when it has
    digits below the microsecond; ``ToDatetime`` gives microseconds, at well over this
    cost); raises ValueError or OverflowError when out of range."""
    nanos = stamp.nanos
    if not 0 <= nanos < 1_000_000_000:
        raise ValueError(f"nanos {nanos} is not in [0, 1e9)")
    value = _EPOCH + timedelta(0, stamp.seconds, nanos // 1000)
    extra = nanos % 1000
    return NanoTime.of(value, extra) if extra else value


def _time(value: Any, kind: str) -> datetime:
    if kind == "ce_timestamp":
        try:
            return _datetime(value.ce_timestamp)
        except (ValueError, OverflowError) as exc:
            raise EventValidationError(
                f"attribute 'time' is not a valid timestamp: {exc}", attribute="time"
            ) from exc
    if kind == "ce_string":
        return parse_time(value.ce_string)
    raise EventValidationError(
        f"attribute 'time' must be a timestamp (ce_timestamp), got {kind}", attribute="time"
    )


def _extension(name: str, value: Any, kind: str) -> ExtensionValue:
    if kind == "ce_string":
        text: str = value.ce_string
        return text
    if kind == "ce_boolean":
        return bool(value.ce_boolean)
    if kind == "ce_integer":
        return int(value.ce_integer)
    if kind == "ce_uri":
        return URI(value.ce_uri)
    if kind == "ce_uri_ref":
        return URIRef(value.ce_uri_ref)
    if kind == "ce_bytes":
        return Binary(base64.b64encode(value.ce_bytes).decode("ascii"))
    # ce_timestamp, the last kind the schema has
    try:
        return Timestamp(encode_attribute(_datetime(value.ce_timestamp)))
    except (ValueError, OverflowError) as exc:
        raise EventValidationError(
            f"extension {name!r} is not a valid timestamp: {exc}", attribute=name
        ) from exc


def _text(text: str, content_type: str | None) -> Any:
    if content_type is not None and not is_json_media_type(content_type):
        return text
    raw = text.encode("utf-8", "surrogatepass")
    try:
        checked_json(raw, content_type)
    except EventValidationError:
        if content_type is None:
            return text  # a producer that sent plain text without saying so
        raise
    return JSONData(raw)


def from_proto_batch(batch: CloudEventBatch | Sequence[CloudEvent]) -> list[Event]:
    """The events of a ``CloudEventBatch`` (or of a list of ``CloudEvent``), in order.

    Raises ``EventValidationError`` naming the first invalid event and its attribute.
    """
    messages = batch.events if isinstance(batch, CloudEventBatch) else batch
    events = []
    for index, msg in enumerate(messages):
        try:
            events.append(from_proto(msg))
        except EventValidationError as exc:
            raise exc.in_batch(index) from exc
    return events


def decode(payload: bytes) -> Event:
    """One event from its protobuf serialization; raises ``EventValidationError``."""
    msg = CloudEvent()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise EventValidationError(f"the body is not a protobuf CloudEvent: {exc}") from exc
    return from_proto(msg)


def decode_batch(payload: bytes) -> list[Event]:
    """The events of a serialized ``CloudEventBatch``; raises ``EventValidationError``."""
    msg = CloudEventBatch()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise EventValidationError(f"the body is not a protobuf CloudEventBatch: {exc}") from exc
    return from_proto_batch(msg)
