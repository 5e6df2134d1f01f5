"""The NATS protocol binding: both content modes, the spec's header rules, and wrapping."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given, settings

from eventmesh import Event, EventValidationError
from eventmesh.bindings import encode_attribute
from eventmesh.bindings.nats import (
    MESSAGE_TYPE,
    from_message,
    to_binary,
    to_structured,
    wrap_message,
)
from eventmesh.testing.strategies import events


def _canonical(event: Event) -> Event:
    """Extensions as header strings: what binary mode can carry (the spec allows it)."""
    return event.replace(extensions={k: encode_attribute(v) for k, v in event.extensions.items()})


# -- round trips --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(events())
def test_binary_mode_round_trips_any_event(event: Event) -> None:
    """Any event comes back from binary mode as it was, extensions as canonical strings."""
    headers, payload = to_binary(event)
    assert all(value.isascii() and value.isprintable() for value in headers.values())
    assert _canonical(from_message(headers, payload)) == _canonical(event)


@settings(max_examples=300, deadline=None)
@given(events())
def test_structured_mode_round_trips_any_event(event: Event) -> None:
    """Any event comes back from structured mode exactly as it was."""
    headers, payload = to_structured(event)
    assert from_message(headers, payload) == event


@settings(max_examples=100, deadline=None)
@given(events())
def test_structured_payload_is_what_the_sdk_reads(event: Event) -> None:
    """The cloudevents SDK's JSON format reads our structured payload as the same event."""
    _, payload = to_structured(event)
    sdk_event = JSONFormat().read(None, payload)
    assert sdk_event.get_id() == event.id
    assert sdk_event.get_type() == event.type
    assert sdk_event.get_source() == event.source


# -- binary mode: the spec's header rules ---------------------------------------------------


def test_header_values_are_percent_encoded_as_the_spec_shows() -> None:
    """Space, '"', '%' and non-ASCII are percent-encoded in upper case; the rest stays."""
    event = Event(type="t", source="/s", id="Euro € 😀", subject='say "100%"')
    headers, _ = to_binary(event)
    assert headers["ce-id"] == "Euro%20%E2%82%AC%20%F0%9F%98%80"
    assert headers["ce-subject"] == "say%20%22100%25%22"
    assert headers["ce-source"] == "/s"


def test_binary_headers_name_every_attribute_with_the_ce_prefix() -> None:
    """Context attributes and extensions each get a ce- header; the data is the payload."""
    event = Event(
        type="com.example.t",
        source="/s",
        id="1",
        time=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        datacontenttype="application/json",
        data={"a": 1},
        extensions={"partitionkey": "k1", "count": 3, "flag": True},
    )
    headers, payload = to_binary(event)
    assert headers == {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "/s",
        "ce-type": "com.example.t",
        "ce-datacontenttype": "application/json",
        "ce-time": "2024-05-01T12:00:00Z",
        "ce-partitionkey": "k1",
        "ce-count": "3",
        "ce-flag": "true",
    }
    assert payload == b'{"a":1}'


def test_header_names_are_read_case_insensitively() -> None:
    """CE-ID and Ce-Type are the same headers as ce-id and ce-type."""
    headers = {"CE-SpecVersion": "1.0", "CE-ID": "x", "Ce-Source": "/s", "ce-TYPE": "t"}
    event = from_message(headers, b"")
    assert (event.id, event.source, event.type) == ("x", "/s", "t")


def test_quoted_and_lower_case_percent_values_are_accepted() -> None:
    """Older producers' quoted strings and lower-case hex decode to the same value."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": '"a \\"quoted\\" id"',
        "ce-source": "%2fpath%2fto",
        "ce-type": "t",
    }
    event = from_message(headers, b"")
    assert event.id == 'a "quoted" id'
    assert event.source == "/path/to"


def test_invalid_utf8_in_a_header_is_rejected() -> None:
    """An overlong encoding (%C0%A0) is not valid UTF-8 and must be refused."""
    headers = {"ce-specversion": "1.0", "ce-id": "%C0%A0", "ce-source": "/s", "ce-type": "t"}
    with pytest.raises(EventValidationError) as info:
        from_message(headers, b"")
    assert info.value.attribute == "id"


def test_binary_message_without_required_header_is_rejected() -> None:
    """A message with ce- headers but no ce-type claims to be a CloudEvent and is not."""
    with pytest.raises(EventValidationError) as info:
        from_message({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s"}, b"")
    assert info.value.attribute == "type"


def test_absent_time_header_gives_no_time() -> None:
    """Without ce-time the event has no time: none is invented on the way in."""
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    assert from_message(headers, b"").time is None


def test_content_type_header_stands_in_for_datacontenttype() -> None:
    """A binary message with Content-Type but no ce-datacontenttype uses the former."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "/s",
        "ce-type": "t",
        "Content-Type": "text/plain",
    }
    event = from_message(headers, b"hello")
    assert event.datacontenttype == "text/plain"
    assert event.data == "hello"


def test_sdk_binary_headers_are_read() -> None:
    """Headers written by the cloudevents SDK's binary binding (ce- prefix) are read."""
    sdk_event = CloudEvent(
        attributes={
            "id": "id with spaces/ü",
            "source": "https://example.com/a b",
            "type": "com.example.t",
            "specversion": "1.0",
            "time": datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC),
            "datacontenttype": "application/json",
            "comexampleext": "v 1",
        },
        data={"n": 1},
    )
    message = sdk_http.to_binary(sdk_event, JSONFormat())
    event = from_message(message.headers, message.body)
    assert event == Event.from_cloudevent(sdk_event)


# -- structured mode ------------------------------------------------------------------------


def test_structured_mode_is_told_by_its_content_type() -> None:
    """Content-Type application/cloudevents+json (any case) marks a structured message."""
    event = Event(type="t", source="/s", data={"x": 1})
    _, payload = to_structured(event)
    assert from_message({"content-type": "Application/CloudEvents+JSON"}, payload) == event


def test_headerless_json_event_is_read_as_structured() -> None:
    """Binding 1.0.2 producers send the JSON format with no headers at all."""
    event = Event(type="t", source="/s", data={"x": 1})
    _, payload = to_structured(event)
    assert from_message(None, payload) == event
    assert from_message({}, b"  " + payload) == event


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"specversion":"1.0","data":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["plain", "claims-cloudevent"],
)
def test_headerless_json_too_deep_to_read_is_a_validation_error(payload: bytes) -> None:
    """Header-less JSON nested past the decoder's stack is EventValidationError on data
    (what callers wrap), never the RecursionError msgspec raises for it."""
    with pytest.raises(EventValidationError, match="nested too deeply") as info:
        from_message(None, payload, subject="s")
    assert info.value.attribute == "data"


def test_headerless_json_event_with_data_nested_too_deep_is_refused() -> None:
    """A header-less JSON event whose data nests past 64 is refused, as the same
    payload under the structured Content-Type is."""
    event = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":%s}' % (
        b"[" * 100 + b"]" * 100
    )
    for headers in (None, {"Content-Type": "application/cloudevents+json"}):
        with pytest.raises(EventValidationError, match="64 deep") as info:
            from_message(headers, event, subject="s")
        assert info.value.attribute == "data"


def test_batch_content_type_is_refused() -> None:
    """The NATS binding has no batch mode: such a message is not read as events."""
    with pytest.raises(EventValidationError):
        from_message({"Content-Type": "application/cloudevents-batch+json"}, b"[]")


def test_sdk_structured_payload_is_read() -> None:
    """A payload written by the cloudevents SDK's JSON format is read as the same event."""
    sdk_event = CloudEvent(
        attributes={"id": "1", "source": "/s", "type": "t", "specversion": "1.0"},
        data={"n": [1, 2]},
    )
    payload = JSONFormat().write(sdk_event)
    headers = {"Content-Type": "application/cloudevents+json"}
    assert from_message(headers, payload) == Event.from_cloudevent(sdk_event)


# -- messages that are not CloudEvents --------------------------------------------------------


def test_plain_message_is_wrapped_not_dropped() -> None:
    """A message with no CloudEvent in it becomes an io.eventmesh.nats.message event."""
    stamp = datetime(2024, 5, 1, tzinfo=UTC)
    event = from_message(
        {"X-Other": "1"}, b"raw \x00 bytes", subject="orders.new", id="S-7", time=stamp
    )
    assert event.type == MESSAGE_TYPE
    assert event.source == "nats://orders.new"
    assert event.id == "S-7"
    assert event.time == stamp
    assert event.datacontenttype == "application/octet-stream"
    assert event.data == b"raw \x00 bytes"


def test_wrapped_message_keeps_its_content_type() -> None:
    """A plain message's Content-Type becomes the event's, and its data is read by it."""
    event = from_message({"Content-Type": "application/json"}, b'{"a": 1}', subject="x")
    assert event.datacontenttype == "application/json"
    assert event.data == {"a": 1}
    assert event.id  # a new id when the caller gives none


def test_plain_json_without_specversion_is_wrapped() -> None:
    """A JSON object that is not a CloudEvent is wrapped like any other payload."""
    event = from_message(None, b'{"hello": "world"}', subject="s")
    assert event.type == MESSAGE_TYPE
    assert event.data == b'{"hello": "world"}'


def test_empty_plain_message_has_no_data() -> None:
    """An empty payload wraps into an event without data."""
    assert from_message(None, b"", subject="s").data is None


def test_broken_cloudevent_can_be_kept_with_its_reason() -> None:
    """wrap_message keeps a broken CloudEvent, the reason in 'cloudeventerror'."""
    headers = {"ce-specversion": "1.0", "ce-id": "1"}
    event = wrap_message(headers, b"x", subject="s", error="no ce-type")
    assert event.extensions == {"cloudeventerror": "no ce-type"}
    assert event.data == b"x"
