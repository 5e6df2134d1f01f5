"""The typed decoder of the JSON event format (eventmesh._wire): the same events as the
general path, at a fraction of the cost, and every refusal left to the general path."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventmesh import Event
from eventmesh._wire import decode_batch, decode_one
from eventmesh.bindings.http import from_http
from eventmesh.bindings.nats import from_message
from eventmesh.bindings.protobuf import from_proto, to_proto
from eventmesh.errors import EventValidationError
from eventmesh.event import (
    SPECVERSION,
    JSONData,
    data_text,
    decode_json,
    decode_json_batch,
    encode_json,
    encode_json_batch,
    keep_data_text,
    stored_data,
)
from eventmesh.testing.strategies import content_and_data, events

BATCH = {"content-type": "application/cloudevents-batch+json"}


def general(payload: bytes) -> Event:
    """The event the general path (a dict, then Event.from_dict) makes of ``payload``."""
    obj = msgspec.json.decode(payload)
    if "data" in obj:
        keep_data_text(obj, data_text(payload))
    return Event.from_dict(obj)


def plain(**fields: Any) -> bytes:
    """A JSON-format event with the required attributes and ``fields``."""
    obj = {"specversion": "1.0", "id": "e1", "source": "/s", "type": "t", **fields}
    return msgspec.json.encode(obj)


@settings(max_examples=300, deadline=None)
@given(events(data=content_and_data("format")))
def test_the_typed_decoder_makes_the_events_the_general_path_makes(event: Event) -> None:
    """Whatever the typed decoder takes, it decodes to the event the general path makes,
    written back to the very same bytes; whatever it leaves, decode_json still reads."""
    payload = encode_json(event)
    ours = decode_one(payload)
    theirs = general(payload)
    assert decode_json(payload) == theirs
    if ours is not None:
        assert ours == theirs
        assert encode_json(ours) == encode_json(theirs) == payload
        assert ours.extensions == theirs.extensions
        assert type(ours.time) is type(theirs.time)
        assert type(stored_data(ours)) is type(stored_data(theirs))


@settings(max_examples=100, deadline=None)
@given(st.lists(events(data=content_and_data("format")), max_size=5))
def test_a_batch_decodes_to_the_events_of_the_general_path(batch: list[Event]) -> None:
    """A batch the typed decoder takes is the list the general path makes, item by item."""
    payload = encode_json_batch(batch)
    ours = decode_batch(payload)
    theirs = [general(encode_json(event)) for event in batch]
    if ours is not None:
        assert ours == theirs
        assert encode_json_batch(ours) == payload
    assert decode_json_batch(payload) == theirs


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"data": {"n": 1}},
        {"data": None},
        {"data_base64": "AAE="},
        {"datacontenttype": "text/plain", "data": "hello"},
        {"time": "2024-05-01T12:00:00.123456789Z", "subject": "x", "dataschema": "urn:s"},
        {"time": "2024-05-01T12:00:00+02:00", "partitionkey": "k"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        {"tracestate": "a=b"},
        {"correlationid": "c", "replyto": None},
        {"replyto": "r"},
        {"partitionkey": 7},
        {"partitionkey": True},
    ],
)
def test_plain_events_take_the_typed_path(fields: dict[str, Any]) -> None:
    """An event with the attributes, data forms and extensions events carry most is
    decoded by the typed decoder, alone and in a batch."""
    payload = plain(**fields)
    event = decode_one(payload)
    assert event is not None
    assert event == general(payload)
    assert decode_batch(b"[" + payload + b"," + payload + b"]") == [event, event]


def test_data_keeps_its_text_and_is_parsed_only_when_read() -> None:
    """JSON data decoded on the typed path is the text it arrived as, parsed on first read."""
    payload = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{ "b" : -0 }}'
    event = decode_one(payload)
    assert event is not None
    kept = stored_data(event)
    assert type(kept) is JSONData
    assert kept.raw == b'{ "b" : -0 }'
    assert not kept.parsed
    assert event.data == {"b": 0}
    assert b'"data":{ "b" : -0 }' in encode_json(event)


def test_an_event_from_the_typed_path_is_checked_again_when_changed() -> None:
    """The typed path skips the Event's own checks once, for the fields it checked; the
    event it makes carries the plain specversion, so a replace is checked as ever."""
    event = decode_one(plain(data=1))
    assert event is not None
    assert event.specversion is SPECVERSION
    with pytest.raises(EventValidationError) as caught:
        event.replace(id="")
    assert caught.value.attribute == "id"


@pytest.mark.parametrize(
    ("payload", "attribute"),
    [
        (plain(id=""), "id"),
        (plain(source=None), "source"),
        (plain(type=5), "type"),
        (plain(specversion="0.3"), "specversion"),
        (plain(subject=""), "subject"),
        (plain(time="2024-05-01T12:00:00"), "time"),
        (plain(time="yesterday"), "time"),
        (plain(partitionkey=2**31), "partitionkey"),
        (plain(partitionkey=1.5), "partitionkey"),
        (plain(data_base64="not base64!"), "data_base64"),
        (plain(data=1, data_base64="AAE="), "data"),
        (b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{', None),
        (b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"\xff"}', None),
    ],
)
def test_what_the_typed_path_refuses_the_general_path_names(
    payload: bytes, attribute: str | None
) -> None:
    """A payload the typed decoder does not take is refused by decode_json with the general
    path's error, naming the attribute."""
    assert decode_one(payload) is None
    assert decode_batch(b"[" + payload + b"]") is None
    with pytest.raises(EventValidationError) as caught:
        decode_json(payload)
    if attribute is not None:
        assert caught.value.attribute == attribute


def test_data_nested_too_deep_is_refused_on_every_path() -> None:
    """Data nested deeper than the limit is left to the general path, which refuses it."""
    deep: Any = 0
    for _ in range(70):
        deep = [deep]
    payload = plain(data=deep)
    assert decode_one(payload) is None
    with pytest.raises(EventValidationError) as caught:
        from_http(BATCH, b"[" + payload + b"]")
    assert caught.value.attribute == "data"


def test_other_extensions_take_the_general_path() -> None:
    """An extension the typed decoder does not know by name is decoded, kept, by the
    general path; so is a NATS message of headerless JSON."""
    payload = plain(myext="v", partitionkey="k")
    assert decode_one(payload) is None
    event = decode_json(payload)
    assert event.extensions == {"myext": "v", "partitionkey": "k"}
    assert from_message(None, payload) == event
    assert from_message(None, plain(partitionkey="k")) == decode_one(plain(partitionkey="k"))


def test_several_extensions_keep_their_order() -> None:
    """Extensions are written back in the order they came in: an event with several takes
    the general path, alone or as one item of a batch whose other items stay typed."""
    first = plain(traceparent="t", partitionkey="k")
    second = plain(partitionkey="k", traceparent="t")
    assert decode_one(first) is None
    batch = decode_batch(b"[" + first + b"," + second + b"," + plain(data=1) + b"]")
    assert batch is not None
    assert [list(event.extensions) for event in batch] == [
        ["traceparent", "partitionkey"],
        ["partitionkey", "traceparent"],
        [],
    ]
    assert [encode_json(event) for event in batch[:2]] == [
        encode_json(general(first)),
        encode_json(general(second)),
    ]


def test_protobuf_events_skip_only_the_checks_from_proto_made() -> None:
    """from_proto skips the Event's own checks only for what it checked itself: an empty
    optional attribute, another specversion or a bad extension name is still refused."""
    event = Event(type="t", source="/s", subject="x", data={"n": 1})
    decoded = from_proto(to_proto(event))
    assert decoded == event
    assert decoded.specversion is SPECVERSION
    empty = to_proto(event)
    empty.attributes["subject"].ce_string = ""
    old = to_proto(event)
    old.spec_version = "0.3"
    named = to_proto(event)
    named.attributes["Bad-Name"].ce_string = "v"
    for msg, attribute in ((empty, "subject"), (old, "specversion"), (named, "Bad-Name")):
        with pytest.raises(EventValidationError) as caught:
            from_proto(msg)
        assert caught.value.attribute == attribute
