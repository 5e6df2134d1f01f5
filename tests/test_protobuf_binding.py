"""The CloudEvents protobuf format: typed attributes, the three data kinds, errors, vectors.

The cloudevents SDK (2.2) has no protobuf format, so nothing here compares against it;
the wire is checked against the official schema's field names and numbers instead.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from eventmesh import Event, EventValidationError
from eventmesh.bindings import decode_data
from eventmesh.bindings.protobuf import (
    CloudEvent,
    CloudEventBatch,
    decode,
    decode_batch,
    encode,
    encode_batch,
    from_proto,
    from_proto_batch,
    to_proto,
    to_proto_batch,
)
from eventmesh.event import NanoTime, format_time
from eventmesh.testing.strategies import content_and_data, events

VECTORS = Path(__file__).parent / "conformance_vectors"
TIME = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def _kinds(msg: CloudEvent) -> dict[str, str | None]:
    """Each attribute of the map by the oneof member that holds it."""
    return {name: value.WhichOneof("attr") for name, value in msg.attributes.items()}


def test_every_attribute_type_travels_typed_and_round_trips() -> None:
    """Context attributes and bool/int/str extensions use their typed oneof members."""
    event = Event(
        id="e-1",
        type="com.example.t",
        source="/s",
        time=TIME,
        datacontenttype="application/json",
        dataschema="https://example.com/schema.json",
        subject="sub",
        data={"a": [1, 2]},
        extensions={"flag": True, "count": -7, "big": 2**31 - 1, "label": "x", "off": False},
    )
    msg = to_proto(event)
    assert (msg.id, msg.source, msg.spec_version, msg.type) == ("e-1", "/s", "1.0", "com.example.t")
    assert _kinds(msg) == {
        "time": "ce_timestamp",
        "datacontenttype": "ce_string",
        "dataschema": "ce_uri",
        "subject": "ce_string",
        "flag": "ce_boolean",
        "off": "ce_boolean",
        "count": "ce_integer",
        "big": "ce_integer",
        "label": "ce_string",
    }
    assert msg.attributes["time"].ce_timestamp == Timestamp(seconds=1714566615, nanos=123456000)
    assert from_proto(msg) == event
    back = from_proto(msg).extensions
    assert type(back["flag"]) is bool
    assert type(back["count"]) is int


def test_a_minimal_event_has_no_attributes_map_and_no_data() -> None:
    """An event with only the required attributes writes an empty map and no data."""
    event = Event(id="1", type="t", source="/s", time=None)
    msg = to_proto(event)
    assert len(msg.attributes) == 0
    assert msg.WhichOneof("data") is None
    assert from_proto(msg) == event


def test_time_in_another_zone_comes_back_as_the_same_instant_in_utc() -> None:
    """A Timestamp has no zone: the instant survives, read back in UTC."""
    local = datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    back = from_proto(to_proto(Event(type="t", source="/s", time=local))).time
    assert back == local
    assert back is not None
    assert back.tzinfo == UTC


@pytest.mark.parametrize(
    ("data", "content_type", "member", "wire"),
    [
        (b"\x00\xffraw", None, "binary_data", b"\x00\xffraw"),
        (b"\x00\xffraw", "application/json", "binary_data", b"\x00\xffraw"),
        (b"", "application/octet-stream", "binary_data", b""),
        ("plain text", "text/plain", "text_data", "plain text"),
        ("<a/>", "application/xml", "text_data", "<a/>"),
        ({"world": "hello"}, "application/json", "text_data", '{"world":"hello"}'),
        ({"n": 1}, "application/cloudevents-thing+json; charset=utf-8", "text_data", '{"n":1}'),
        ([1, 2], None, "text_data", "[1,2]"),
        ("hi", None, "text_data", '"hi"'),
        ("42", "application/json", "text_data", '"42"'),
        (42, None, "text_data", "42"),
        (False, None, "text_data", "false"),
    ],
)
def test_data_travels_in_the_member_its_kind_calls_for(
    data: Any, content_type: str | None, member: str, wire: Any
) -> None:
    """Bytes as binary_data, text as text_data, JSON as text_data of its encoding."""
    event = Event(type="t", source="/s", datacontenttype=content_type, data=data)
    msg = to_proto(event)
    assert msg.WhichOneof("data") == member
    assert getattr(msg, member) == wire
    assert from_proto(msg) == event


def test_non_text_data_under_a_text_type_is_json_encoded_as_the_binary_bindings_do() -> None:
    """A dict under text/plain is sent as its JSON text and read back as that text."""
    event = Event(type="t", source="/s", datacontenttype="text/plain", data={"a": 1})
    msg = to_proto(event)
    assert msg.text_data == '{"a":1}'
    assert from_proto(msg).data == '{"a":1}'


def test_text_that_is_not_json_under_a_json_type_is_kept_as_text() -> None:
    """A producer that sends plain text as text_data without a content type loses nothing."""
    msg = CloudEvent(id="1", source="/s", spec_version="1.0", type="t", text_data="not json")
    assert from_proto(msg).data == "not json"


def test_protobuf_data_travels_as_proto_data_with_its_type_url() -> None:
    """Bytes under application/protobuf with a dataschema go in proto_data, and back."""
    url = "type.googleapis.com/google.protobuf.Timestamp"
    payload = Timestamp(seconds=5).SerializeToString()
    event = Event(
        type="t", source="/s", datacontenttype="application/protobuf", dataschema=url, data=payload
    )
    msg = to_proto(event)
    assert msg.WhichOneof("data") == "proto_data"
    assert msg.proto_data.type_url == url
    assert Timestamp.FromString(msg.proto_data.value) == Timestamp(seconds=5)
    assert from_proto(msg) == event


def test_proto_data_without_attributes_gets_the_content_type_and_schema_it_implies() -> None:
    """proto_data alone reads as application/protobuf bytes with the type URL as dataschema."""
    any_data = AnyMessage()
    any_data.Pack(Timestamp(seconds=9))
    msg = CloudEvent(id="1", source="/s", spec_version="1.0", type="t", proto_data=any_data)
    event = from_proto(msg)
    assert event.datacontenttype == "application/protobuf"
    assert event.dataschema == "type.googleapis.com/google.protobuf.Timestamp"
    assert Timestamp.FromString(event.data) == Timestamp(seconds=9)


def test_the_specs_plain_text_example_reads_as_text() -> None:
    """The format spec's example 6.1 (text_data, time, text/plain) reads as expected."""
    msg = CloudEvent(
        id="a1",
        spec_version="1.0",
        type="io.cloudevent.example",
        source="producer-1",
        text_data="This is a plain text message",
    )
    msg.attributes["time"].ce_timestamp.FromDatetime(TIME)
    msg.attributes["datacontenttype"].ce_string = "text/plain"
    event = from_proto(CloudEvent.FromString(msg.SerializeToString()))
    assert event.data == "This is a plain text message"
    assert event.time == TIME
    assert event.datacontenttype == "text/plain"


def test_extension_types_eventmesh_does_not_keep_become_canonical_strings() -> None:
    """ce_bytes, ce_uri, ce_uri_ref and ce_timestamp extensions read as their strings."""
    msg = CloudEvent(id="1", source="/s", spec_version="1.0", type="t")
    msg.attributes["blob"].ce_bytes = b"\x01\x02"
    msg.attributes["link"].ce_uri = "https://example.com/x"
    msg.attributes["ref"].ce_uri_ref = "/x#y"
    msg.attributes["when"].ce_timestamp.FromDatetime(TIME)
    assert from_proto(msg).extensions == {
        "blob": base64.b64encode(b"\x01\x02").decode(),
        "link": "https://example.com/x",
        "ref": "/x#y",
        "when": "2024-05-01T12:30:15.123456Z",
    }


def test_string_attributes_accept_uri_kinds_and_time_accepts_an_rfc3339_string() -> None:
    """Other producers' spellings of dataschema, subject and time are read."""
    msg = CloudEvent(id="1", source="/s", spec_version="1.0", type="t")
    msg.attributes["dataschema"].ce_string = "https://example.com/s"
    msg.attributes["subject"].ce_uri_ref = "a/b"
    msg.attributes["time"].ce_string = "2024-05-01T12:30:15.123456Z"
    event = from_proto(msg)
    assert (event.dataschema, event.subject, event.time) == ("https://example.com/s", "a/b", TIME)


def _message(**attributes: Any) -> CloudEvent:
    msg = CloudEvent(id="1", source="/s", spec_version="1.0", type="t")
    for name, (kind, value) in attributes.items():
        if kind is None:
            msg.attributes[name].SetInParent()
        elif isinstance(value, Timestamp):
            getattr(msg.attributes[name], kind).CopyFrom(value)
        else:
            setattr(msg.attributes[name], kind, value)
    return msg


@pytest.mark.parametrize(
    ("msg", "attribute"),
    [
        (CloudEvent(source="/s", spec_version="1.0", type="t"), "id"),
        (CloudEvent(id="1", spec_version="1.0", type="t"), "source"),
        (CloudEvent(id="1", source="/s", type="t"), "specversion"),
        (CloudEvent(id="1", source="/s", spec_version="0.3", type="t"), "specversion"),
        (CloudEvent(id="1", source="/s", spec_version="1.0"), "type"),
        (_message(datacontenttype=("ce_integer", 1)), "datacontenttype"),
        (_message(subject=("ce_boolean", True)), "subject"),
        (_message(time=("ce_integer", 5)), "time"),
        (_message(time=("ce_string", "yesterday")), "time"),
        (_message(empty=(None, None)), "empty"),
        (_message(id=("ce_string", "2")), "id"),
        (_message(Bad=("ce_string", "x")), "Bad"),
        (_message(time=("ce_timestamp", Timestamp(seconds=253402300800))), "time"),
        (_message(time=("ce_timestamp", Timestamp(seconds=0, nanos=-1))), "time"),
        (_message(seen=("ce_timestamp", Timestamp(seconds=-62135596801))), "seen"),
    ],
)
def test_invalid_messages_raise_naming_the_attribute(msg: CloudEvent, attribute: str) -> None:
    """A message that breaks the spec raises EventValidationError naming the attribute."""
    with pytest.raises(EventValidationError) as info:
        from_proto(msg)
    assert info.value.attribute == attribute


@given(
    st.integers(min_value=-62135596800, max_value=253402300799),
    st.integers(min_value=0, max_value=999_999_999),
)
def test_timestamps_read_as_protobufs_own_conversion_reads_them(seconds: int, nanos: int) -> None:
    """A ce_timestamp time or extension is the instant Timestamp.ToDatetime gives, with
    its nanoseconds kept."""
    stamp = Timestamp(seconds=seconds, nanos=nanos)
    msg = _message(time=("ce_timestamp", stamp), seen=("ce_timestamp", stamp))
    event = from_proto(msg)
    expected = stamp.ToDatetime(tzinfo=UTC)
    got = event.time
    assert got == expected
    assert got is not None
    assert (got.nanosecond if isinstance(got, NanoTime) else got.microsecond * 1000) == nanos
    assert event.extensions["seen"] == format_time(got)
    assert event.extensions["seen"] == Event(type="t", source="/s", time=got).to_dict()["time"]


def test_data_that_cannot_be_json_is_refused_on_the_way_out() -> None:
    """An event whose data has no JSON encoding raises EventValidationError on 'data'."""
    with pytest.raises(EventValidationError) as info:
        to_proto(Event(type="t", source="/s", data=object()))
    assert info.value.attribute == "data"


def test_serialized_events_and_batches_round_trip() -> None:
    """encode/decode and the batch form keep every event and the order."""
    events = [
        Event(type="t", source="/s", data=i, extensions={"partitionkey": f"k{i}"}) for i in range(3)
    ]
    assert decode(encode(events[0])) == events[0]
    assert decode_batch(encode_batch(events)) == events
    batch = to_proto_batch(events)
    assert isinstance(batch, CloudEventBatch)
    assert from_proto_batch(batch) == events
    assert from_proto_batch(list(batch.events)) == events


def test_batch_errors_name_the_event_and_bad_bytes_are_validation_errors() -> None:
    """A bad event in a batch is named by index; bytes that are not protobuf are refused."""
    batch = to_proto_batch([Event(type="t", source="/s"), Event(type="t", source="/s")])
    batch.events[1].id = ""
    with pytest.raises(EventValidationError, match="event 1 of the batch") as info:
        from_proto_batch(batch)
    assert info.value.attribute == "id"
    assert info.value.index == 1
    with pytest.raises(EventValidationError):
        decode(b"\xff\xff\xff")
    with pytest.raises(EventValidationError):
        decode_batch(b"\x0a\x05\xff")


def _vectors() -> list[tuple[str, Event]]:
    """Every event of the CloudEvents conformance vectors (as tests/test_event.py reads them)."""
    out = []
    for name in ("v1.yaml", "v1_minimum.yaml"):
        docs = yaml.load_all((VECTORS / name).read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
        for i, doc in enumerate(docs):
            attrs = dict(doc["ContextAttributes"])
            extensions = attrs.pop("Extensions", {}) or {}
            body = doc.get("Data", "").encode("utf-8")
            event = Event.from_dict({**attrs, **extensions})
            event = event.replace(data=decode_data(body, attrs.get("datacontenttype")))
            out.append((f"{name}#{i}", event))
    return out


VECTOR_EVENTS = _vectors()


@pytest.mark.parametrize(("name", "event"), VECTOR_EVENTS, ids=[v[0] for v in VECTOR_EVENTS])
def test_conformance_vectors_round_trip(name: str, event: Event) -> None:
    """Each conformance vector survives the protobuf format, as a message and as bytes."""
    assert from_proto(to_proto(event)) == event
    assert decode(encode(event)) == event
    msg = to_proto(event)
    for attr in ("datacontenttype", "dataschema", "subject", "time"):
        assert (attr in msg.attributes) == (event.get(attr) is not None)


@given(events(data=content_and_data("format")))
def test_any_valid_event_round_trips(event: Event) -> None:
    """Every valid event with JSON, text or bytes data decodes back to itself."""
    assert decode(encode(event)) == event
