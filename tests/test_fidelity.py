"""Every event arrives as it was sent, at the binding level: JSON data bytes, bad JSON
refused, nanosecond times, typed extensions over protobuf, header encodings, Kafka's
empty value (issue 16)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp as ProtoTimestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from eventmesh import Event, EventValidationError
from eventmesh.bindings import http, kafka, nats, protobuf
from eventmesh.event import (
    URI,
    Binary,
    JSONData,
    NanoTime,
    Timestamp,
    URIRef,
    decode_json,
    encode_json,
    format_time,
    parse_time,
    stored_data,
)
from eventmesh.pipeline.filters import compile_filter

# Bodies a JSON encoder would rewrite: spacing, duplicate keys, -0, escapes, big numbers.
BODIES = [
    b'{ "b" : 1 }',
    b'{"a":1,"a":2}',
    b"-0",
    b"null",
    b'"caf\\u00e9"',
    b"[1.0, 1e2, 12345678901234567890123]",
    b'{"nested": {"x": [true, false, null]}}\n',
]

HEADERS = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}


def binary_in(body: bytes, content_type: str | None = "application/json") -> Event:
    headers = dict(HEADERS)
    if content_type is not None:
        headers["content-type"] = content_type
    return http.from_http_one(headers, body)


# -- data bytes are kept -------------------------------------------------------------------


@pytest.mark.parametrize("body", BODIES)
def test_json_body_goes_out_byte_for_byte_on_every_binding(body: bytes) -> None:
    """A binary-mode JSON body is written back unchanged by HTTP, Kafka, NATS and
    protobuf, and verbatim inside the JSON event format."""
    event = binary_in(body)
    assert http.to_binary(event)[1] == body
    assert kafka.to_binary(event)[1] == body
    assert nats.to_binary(event)[1] == body
    assert protobuf.to_proto(event).text_data.encode() == body
    assert b'"data":' + body + b"}" in http.to_structured(event)[1]
    # ... and read back from each, still the same bytes.
    # (whitespace around the data member is the format's, not the data's)
    assert http.to_binary(http.from_http_one(*http.to_structured(event)))[1] == body.strip()
    key, value, headers = kafka.to_binary(event)
    assert http.to_binary(kafka.from_message(key, value, headers))[1] == body
    assert http.to_binary(nats.from_message(*nats.to_binary(event)))[1] == body
    assert http.to_binary(protobuf.decode(protobuf.encode(event)))[1] == body


def test_json_null_body_is_data_not_absence() -> None:
    """A JSON ``null`` body is kept (and sent) as ``null``, not dropped as no data."""
    event = binary_in(b"null")
    assert event.data is None
    assert stored_data(event) is not None
    assert http.to_binary(event)[1] == b"null"
    assert kafka.to_binary(event)[1] == b"null"


def test_data_reads_as_the_parsed_value_and_compares_equal() -> None:
    """``event.data`` is the parsed JSON; the event equals one built from that value."""
    event = binary_in(b'{ "b" : 1, "b": -0 }')
    assert event.data == {"b": 0}
    assert event == event.replace(data={"b": 0})
    assert isinstance(stored_data(event), JSONData)


def test_replaced_data_is_encoded_from_the_new_value() -> None:
    """A transform that replaces the data sends the new value, not the old bytes."""
    event = binary_in(b'{ "b" : 1 }').replace(data={"b": 2})
    assert http.to_binary(event)[1] == b'{"b":2}'


def test_structured_input_keeps_the_data_text() -> None:
    """The data of a structured event is written as the very text it had, in binary
    mode and in the JSON format; batches too."""
    text = b'{ "amount" : 1.50, "amount": 2 }'
    payload = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + text + b"}"
    event = http.from_http_one({"content-type": http.STRUCTURED_CONTENT_TYPE}, payload)
    assert http.to_binary(event)[1] == text
    assert encode_json(event) == payload
    assert event.data == {"amount": 2}
    batch = b"[" + payload + b"," + payload + b"]"
    events = http.from_http({"content-type": http.BATCH_CONTENT_TYPE}, batch)
    assert [http.to_binary(e)[1] for e in events] == [text, text]
    split = http.from_http({"content-type": http.BATCH_CONTENT_TYPE}, batch, max_event_size=200)
    assert [http.to_binary(e)[1] for e in split] == [text, text]
    assert http.to_binary(decode_json(payload))[1] == text


def test_structured_text_data_under_text_content_type_stays_text() -> None:
    """A JSON string as data of a text/plain event goes out in binary mode as the text."""
    payload = (
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t",'
        b'"datacontenttype":"text/plain","data":"hi \\"you\\""}'
    )
    assert http.to_binary(decode_json(payload))[1] == b'hi "you"'


def test_filters_read_kept_json() -> None:
    """Filters read the parsed data of a kept JSON body."""
    event = binary_in(b'{ "amount" : 150 }')
    assert compile_filter({"pattern": {"data": {"amount": [150]}}})(event)
    assert not compile_filter({"pattern": {"data": {"amount": [151]}}})(event)


def test_kept_json_is_not_parsed_until_read() -> None:
    """Routing and sending an event whose data nothing reads never parses its body."""
    event = binary_in(b'{"a": 1}')
    kept = stored_data(event)
    assert compile_filter({"exact": {"type": "t"}})(event)
    http.to_binary(event)
    http.to_structured(event)
    kafka.to_binary(event)
    protobuf.encode(event)
    assert not kept.parsed
    assert event.data == {"a": 1}
    assert kept.parsed


# -- bad JSON is refused -------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"hello, not json", b'{"a":', b"[1] [2]", b'["\xff"]'])
def test_body_that_is_not_json_under_a_json_type_is_refused(body: bytes) -> None:
    """Not JSON (or not UTF-8) under a JSON content type: EventValidationError on data."""
    with pytest.raises(EventValidationError, match="not JSON") as info:
        binary_in(body)
    assert info.value.attribute == "data"
    with pytest.raises(EventValidationError, match="not JSON"):
        binary_in(body, "application/vnd.example+json; charset=utf-8")
    key, value, headers = kafka.to_binary(Event(type="t", source="/s", data=body))
    headers = [*headers, ("content-type", b"application/json")]
    with pytest.raises(EventValidationError, match="not JSON"):
        kafka.from_message(key, value, headers)
    with pytest.raises(EventValidationError, match="not JSON"):
        nats.from_message({**HEADERS, "content-type": "application/json"}, body)


def test_not_json_without_content_type_stays_bytes() -> None:
    """Without a content type a body that is not JSON is kept as bytes, as before."""
    event = binary_in(b"hello", None)
    assert event.data == b"hello"
    assert http.to_binary(event)[1] == b"hello"


def test_protobuf_text_data_that_is_not_json_is_refused() -> None:
    """text_data under a JSON content type must be JSON (gRPC answers INVALID_ARGUMENT)."""
    msg = protobuf.CloudEvent(id="1", source="/s", spec_version="1.0", type="t")
    msg.attributes["datacontenttype"].ce_string = "application/json"
    msg.text_data = "hello, not json"
    with pytest.raises(EventValidationError, match="not JSON") as info:
        protobuf.from_proto(msg)
    assert info.value.attribute == "data"


def test_wrapped_foreign_records_keep_bad_json_as_bytes() -> None:
    """A record that is no CloudEvent is never refused: its body stays bytes."""
    event = kafka.wrap_message(
        None, b"nope", [("content-type", b"application/json")], topic="t", partition=0, offset=1
    )
    assert event.data == b"nope"


# -- nanoseconds ---------------------------------------------------------------------------

NANO = "2024-05-01T12:00:00.123456789Z"


def test_time_keeps_nanoseconds_through_every_binding() -> None:
    """A time with nine fraction digits comes back with nine, on every binding and mode."""
    event = Event(type="t", source="/s", time=parse_time(NANO), data={"a": 1})
    assert isinstance(event.time, NanoTime)
    assert event.time.nanosecond == 123456789
    assert http.to_binary(event)[0]["ce-time"] == NANO
    for back in (
        http.from_http_one(*http.to_binary(event)),
        http.from_http_one(*http.to_structured(event)),
        kafka.from_message(*kafka.to_binary(event)),
        kafka.from_message(*kafka.to_structured(event)),
        nats.from_message(*nats.to_binary(event)),
        nats.from_message(*nats.to_structured(event)),
        protobuf.decode(protobuf.encode(event)),
    ):
        assert back.time is not None
        assert format_time(back.time) == NANO
    stamp = protobuf.to_proto(event).attributes["time"].ce_timestamp
    assert (stamp.seconds, stamp.nanos) == (1714564800, 123456789)


def test_nanosecond_times_compare_as_datetimes() -> None:
    """A NanoTime is a datetime: filters and comparisons keep working."""
    early, late = parse_time("2024-05-01T12:00:00.000000001Z"), parse_time(NANO)
    assert early < late
    assert early == datetime(2024, 5, 1, 12, tzinfo=UTC)
    event = Event(type="t", source="/s", time=late)
    assert compile_filter({"sql": f"time = '{NANO}'"})(event)


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("2024-05-01T12:00:00.1234567+02:00", "2024-05-01T12:00:00.123456700+02:00"),
        ("2024-05-01T12:00:00.123456789123Z", "2024-05-01T12:00:00.123456789Z"),
        ("2024-05-01T12:00:00.123456Z", "2024-05-01T12:00:00.123456Z"),
        ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z"),
    ],
)
def test_time_text_forms(text: str, written: str) -> None:
    """Digits past the microsecond are kept to the nanosecond; other times as before."""
    assert format_time(parse_time(text)) == written


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1, 1, 1),
        max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    )
)
def test_a_time_is_written_as_rfc_3339_whatever_its_digits(value: datetime) -> None:
    """Any year, with or without microseconds, in UTC (``Z``) or at an offset: the text
    is ``isoformat``'s, with ``Z`` for UTC, and reads back as the same instant."""
    text = value.isoformat()
    expected = text[:-6] + "Z" if value.tzinfo is UTC else text
    assert format_time(value) == expected
    assert parse_time(format_time(value)) == value


# -- typed extensions over protobuf -------------------------------------------------------


def typed_message() -> protobuf.CloudEvent:
    msg = protobuf.CloudEvent(id="1", source="/s", spec_version="1.0", type="t")
    msg.attributes["link"].ce_uri = "https://example.com/a b"
    msg.attributes["ref"].ce_uri_ref = "../x"
    msg.attributes["seen"].ce_timestamp.CopyFrom(ProtoTimestamp(seconds=1, nanos=5))
    msg.attributes["blob"].ce_bytes = b"\x00\xff"
    msg.attributes["plain"].ce_string = "s"
    return msg


def test_typed_extensions_survive_protobuf_both_ways() -> None:
    """ce_uri, ce_uri_ref, ce_timestamp and ce_bytes come back as the kinds they were."""
    event = protobuf.from_proto(typed_message())
    ext = event.extensions
    assert type(ext["link"]) is URI
    assert type(ext["ref"]) is URIRef
    assert type(ext["seen"]) is Timestamp
    assert type(ext["blob"]) is Binary
    assert type(ext["plain"]) is str
    assert ext["seen"] == "1970-01-01T00:00:01.000000005Z"
    assert Binary(ext["blob"]).to_bytes() == b"\x00\xff"
    again = protobuf.to_proto(event)
    kinds = {name: value.WhichOneof("attr") for name, value in again.attributes.items()}
    assert kinds == {
        "link": "ce_uri",
        "ref": "ce_uri_ref",
        "seen": "ce_timestamp",
        "blob": "ce_bytes",
        "plain": "ce_string",
    }
    assert again == typed_message()


def test_typed_extensions_are_canonical_strings_elsewhere() -> None:
    """JSON, HTTP, Kafka and NATS write typed extensions as their canonical strings."""
    event = protobuf.from_proto(typed_message())
    body = encode_json(event)
    assert b'"link":"https://example.com/a b"' in body
    assert b'"seen":"1970-01-01T00:00:01.000000005Z"' in body
    assert b'"blob":"' + base64.b64encode(b"\x00\xff") + b'"' in body
    assert event.to_dict()["blob"] == "AP8="
    assert type(event.to_dict()["link"]) is str
    headers = http.to_binary(event)[0]
    assert headers["ce-link"] == "https://example.com/a%20b"
    assert headers["ce-ref"] == "../x"
    assert dict(kafka.to_binary(event)[2])["ce_blob"] == b"AP8="
    assert nats.to_binary(event)[0]["ce-seen"] == "1970-01-01T00:00:01.000000005Z"


def test_typed_extension_values_are_accepted_by_event() -> None:
    """An Event may be built with typed extension strings; other types are refused."""
    event = Event(type="t", source="/s", extensions={"u": URI("urn:x"), "b": Binary.of(b"1")})
    assert event.extensions["b"] == "MQ=="
    with pytest.raises(EventValidationError, match="extension 'x'"):
        Event(type="t", source="/s", extensions={"x": b"raw"})  # type: ignore[dict-item]


# -- header encoding -----------------------------------------------------------------------

SUBJECT = "orders/42 ünï"


@pytest.mark.parametrize(
    ("encoding", "subject"),
    [("spec", "orders/42%20%C3%BCn%C3%AF"), ("raw", SUBJECT)],
)
def test_header_encoding(encoding: Any, subject: str) -> None:
    """spec percent-encodes header values; raw sends UTF-8 as it is; both read back."""
    event = Event(type="t", source="/s", subject=SUBJECT)
    headers, body = http.to_binary(event, header_encoding=encoding)
    assert headers["ce-subject"] == subject
    assert http.from_http_one(headers, body).subject == SUBJECT


@pytest.mark.parametrize("value", [" leading", "trailing ", "tab\there", "line\nbreak", "\x7f"])
def test_raw_header_encoding_falls_back_where_raw_is_not_legal(value: str) -> None:
    """A value that cannot travel as it is in a header is percent-encoded even in raw."""
    event = Event(type="t", source="/s", subject=value)
    raw = http.to_binary(event, header_encoding="raw")[0]["ce-subject"]
    assert raw == http.to_binary(event)[0]["ce-subject"]
    assert raw != value


# -- Kafka: empty data ---------------------------------------------------------------------


def test_kafka_event_without_data_is_a_null_value_unless_asked_for_empty() -> None:
    """By default an event without data is a null-value record; empty_data='empty' writes
    b'' instead, and both read back as an event without data."""
    event = Event(type="t", source="/s")
    assert kafka.to_binary(event)[1] is None
    key, value, headers = kafka.to_binary(event, empty_data="empty")
    assert value == b""
    back = kafka.from_message(key, value, headers)
    assert back.data is None
    assert back == event
    with_data = Event(type="t", source="/s", data=b"x", datacontenttype="text/plain")
    assert kafka.to_binary(with_data, empty_data="empty")[1] == b"x"


@pytest.mark.parametrize("body", [b'{"world":"hello"}\n', b" [1, 2]", b'"text"\r\n'])
def test_stores_keep_whitespace_around_json_data(body: bytes) -> None:
    """JSON data with whitespace around its value, which the JSON format drops, is kept
    by every store: Kafka and NATS write that one event in binary mode even when set to
    structured, and the local store keeps its data apart."""
    from eventmesh.connectors import _local_config

    event = binary_in(body)
    key, value, headers = kafka.to_structured(event)
    assert value == body
    assert http.to_binary(kafka.from_message(key, value, headers))[1] == body
    nats_headers, payload = nats.to_structured(event)
    assert payload == body
    assert http.to_binary(nats.from_message(nats_headers, payload))[1] == body
    (stored,) = _local_config.decode(_local_config.encode([event]))
    assert http.to_binary(stored)[1] == body
    assert stored == event
    # JSON data without such whitespace stays structured.
    plain = binary_in(body.strip())
    assert kafka.to_structured(plain)[1] != body.strip()
    assert nats.to_structured(plain)[0]["Content-Type"].startswith("application/cloudevents")
