"""The Event: validation, defaults, the JSON format, and agreement with the CloudEvents SDK."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given

from eventmesh import Event, EventValidationError
from eventmesh.bindings import decode_data, encode_data
from eventmesh.event import decode_json, decode_json_batch, encode_json, encode_json_batch
from eventmesh.testing.strategies import content_and_data, events, times

VECTORS = Path(__file__).parent / "conformance_vectors"


def _vectors() -> list[tuple[str, Event, bytes]]:
    """Every event of the CloudEvents conformance vectors, built from its wire body."""
    out = []
    for name in ("v1.yaml", "v1_minimum.yaml"):
        docs = yaml.load_all((VECTORS / name).read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
        for i, doc in enumerate(docs):
            attrs = dict(doc["ContextAttributes"])
            extensions = attrs.pop("Extensions", {}) or {}
            body = doc.get("Data", "").encode("utf-8")
            content_type = attrs.get("datacontenttype")
            event = Event.from_dict({**attrs, **extensions})
            event = event.replace(data=decode_data(body, content_type))
            out.append((f"{name}#{i}", event, body))
    return out


VECTOR_EVENTS = _vectors()


def test_defaults_fill_id_time_and_specversion() -> None:
    """An event made with only type and source gets a unique id, the time now, and 1.0."""
    before = datetime.now(UTC)
    a = Event(type="t", source="/s")
    b = Event(type="t", source="/s")
    assert a.id != b.id
    assert a.specversion == "1.0"
    assert a.time is not None
    assert before <= a.time <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("fields", "attribute"),
    [
        ({"type": "", "source": "/s"}, "type"),
        ({"type": "t", "source": ""}, "source"),
        ({"type": "t", "source": "/s", "id": ""}, "id"),
        ({"type": 5, "source": "/s"}, "type"),
        ({"type": "t", "source": "/s", "specversion": "0.3"}, "specversion"),
        ({"type": "t", "source": "/s", "subject": ""}, "subject"),
        ({"type": "t", "source": "/s", "time": datetime(2024, 1, 1)}, "time"),
        ({"type": "t", "source": "/s", "extensions": {"Bad": 1}}, "Bad"),
        ({"type": "t", "source": "/s", "extensions": {"with-dash": 1}}, "with-dash"),
        ({"type": "t", "source": "/s", "extensions": {"subject": "x"}}, "subject"),
        ({"type": "t", "source": "/s", "extensions": {"data": "x"}}, "data"),
        ({"type": "t", "source": "/s", "extensions": {"n": 2**31}}, "n"),
        ({"type": "t", "source": "/s", "extensions": {"f": 1.5}}, "f"),
        ({"type": "t", "source": "/s", "extensions": {"o": {"a": 1}}}, "o"),
    ],
)
def test_invalid_attributes_are_named(fields: dict[str, object], attribute: str) -> None:
    """A wrong attribute raises EventValidationError that names it."""
    with pytest.raises(EventValidationError) as info:
        Event(**fields)  # type: ignore[arg-type]
    assert info.value.attribute == attribute
    assert attribute in str(info.value)


def test_replace_validates_the_copy() -> None:
    """replace() returns a changed copy and checks it like a new event."""
    event = Event(type="t", source="/s")
    assert event.replace(subject="x").subject == "x"
    assert event.subject is None
    with pytest.raises(EventValidationError):
        event.replace(type="")


def test_json_format_matches_the_spec_shape() -> None:
    """Attributes sit at the top level, bytes travel as data_base64, time ends in Z."""
    event = Event(
        type="t",
        source="/s",
        id="1",
        time=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        data=b"\x00\xff",
        extensions={"partitionkey": "k", "count": 3, "flag": True},
    )
    assert event.to_dict() == {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
        "time": "2024-05-01T12:00:00Z",
        "partitionkey": "k",
        "count": 3,
        "flag": True,
        "data_base64": "AP8=",
    }
    assert decode_json(encode_json(event)) == event


@pytest.mark.parametrize(
    ("payload", "attribute"),
    [
        (b"{not json", None),
        (b"[]", None),
        (b'{"specversion":"1.0","id":"1","source":"/s"}', "type"),
        (b'{"specversion":"0.3","id":"1","source":"/s","type":"t"}', "specversion"),
        (b'{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}', "time"),
        (
            b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"!!"}',
            "data_base64",
        ),
        (
            b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}',
            "data",
        ),
    ],
)
def test_bad_json_events_raise_validation_errors(payload: bytes, attribute: str | None) -> None:
    """Malformed structured events raise EventValidationError naming the attribute."""
    with pytest.raises(EventValidationError) as info:
        decode_json(payload)
    assert info.value.attribute == attribute


def test_null_extensions_are_absent_and_nanoseconds_are_truncated() -> None:
    """JSON null means absent; fractions finer than a microsecond are cut, not refused."""
    event = decode_json(
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":null,'
        b'"time":"2024-05-01T12:00:00.123456789+02:00"}'
    )
    assert event.extensions == {}
    assert event.time is not None
    assert event.time.microsecond == 123456


def test_batch_errors_name_the_event() -> None:
    """A bad event in a batch is reported with its index."""
    good = encode_json(Event(type="t", source="/s"))
    with pytest.raises(EventValidationError, match="event 1 of the batch"):
        decode_json_batch(b"[" + good + b',{"specversion":"1.0"}]')
    events = [Event(type="t", source="/s", data=i) for i in range(3)]
    assert decode_json_batch(encode_json_batch(events)) == events


@pytest.mark.parametrize(
    ("name", "event", "body"), VECTOR_EVENTS, ids=[v[0] for v in VECTOR_EVENTS]
)
def test_conformance_vectors_round_trip(name: str, event: Event, body: bytes) -> None:
    """Each conformance vector survives our JSON format, the SDK's, and binary-mode data."""
    assert decode_json(encode_json(event)) == event
    # Our encoding read by the SDK, and the SDK's encoding read by us, give the same event.
    fmt = JSONFormat()
    from_sdk = Event.from_cloudevent(fmt.read(CloudEvent, encode_json(event)))
    read_by_us = decode_json(fmt.write(event.to_cloudevent()))
    if event.time is None:
        # The SDK invents time=now for an event without one; we keep it absent.
        assert from_sdk.time is not None
        assert read_by_us.time is not None
        from_sdk = from_sdk.replace(time=None)
        read_by_us = read_by_us.replace(time=None)
    assert from_sdk == event
    assert read_by_us == event
    # The data survives binary mode as the vector's body does.
    assert decode_data(encode_data(event), event.datacontenttype) == event.data
    assert decode_data(body, event.datacontenttype) == event.data


# Always a time: the SDK invents one for an event without.
@given(events(data=content_and_data("format"), time=times()))
def test_any_valid_event_round_trips_through_json(event: Event) -> None:
    """Every valid event decodes back to itself from the JSON format, and via the SDK."""
    assert decode_json(encode_json(event)) == event
    assert Event.from_cloudevent(event.to_cloudevent()) == event


def test_default_ids_are_random_uuid4_and_differ_after_fork() -> None:
    """Default ids are version-4 UUIDs, and a forked child does not repeat the parent's."""
    import os
    import uuid

    assert uuid.UUID(Event(type="t", source="/s").id).version == 4
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, Event(type="t", source="/s").id.encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    assert child_id != Event(type="t", source="/s").id


def test_events_and_their_kept_json_are_not_tracked_by_the_cyclic_collector() -> None:
    """A process keeping many events (a memory topic's retention) must not have every
    collection walk them: neither an event nor its kept JSON data is a GC-tracked object,
    however it was made, and kept JSON is still parsed on first read, once."""
    import gc

    from eventmesh.event import JSONData, decode_json, decode_json_batch, encode_json, stored_data

    built = Event(type="t", source="/s", data={"a": [1, 2]})
    body = encode_json(built)
    decoded = decode_json(body)
    (in_batch,) = decode_json_batch(b"[" + body + b"]")
    for event in (built, decoded, in_batch):
        assert not gc.is_tracked(event)
    kept = stored_data(decoded)
    assert type(kept) is JSONData
    assert not gc.is_tracked(kept)
    assert not kept.parsed
    assert decoded.data == {"a": [1, 2]}
    assert kept.parsed
    assert kept.value is decoded.data


def test_kept_json_compares_both_ways_and_msgspec_refuses_to_encode_it() -> None:
    """Kept JSON equals its value under == and != alike, and msgspec's own encoders
    refuse an event holding it, read or not, rather than writing the Struct's fields
    (raw as base64, the parsed value) in place of its data."""
    import operator

    import msgspec

    from eventmesh.event import JSONData, decode_json, encode_json

    kept = JSONData(b'{"a": 1}')
    assert kept == {"a": 1}
    assert operator.ne(kept, {"a": 1}) is False
    assert operator.ne({"a": 1}, kept) is False
    assert kept != {"a": 2}
    event = decode_json(encode_json(Event(type="t", source="/s", data={"a": 1})))
    for read in (False, True):
        if read:
            assert event.data == {"a": 1}
        for encode in (msgspec.json.encode, msgspec.msgpack.encode, msgspec.to_builtins):
            with pytest.raises(TypeError, match="_WriteWithEncodeJson"):
                encode(event)
    assert decode_json(encode_json(event)) == event
