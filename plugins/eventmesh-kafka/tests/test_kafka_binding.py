"""The Kafka protocol binding: round trips, the cloudevents SDK's output, the spec's scenarios."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as sdk_kafka
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from eventmesh.bindings import encode_attribute
from eventmesh.bindings.kafka import (
    MESSAGE_TYPE,
    STRUCTURED_CONTENT_TYPE,
    content_mode,
    from_message,
    to_binary,
    to_structured,
    wrap_message,
)
from eventmesh.errors import EventValidationError
from eventmesh.event import Event
from eventmesh.testing.strategies import events

FEATURE = (
    Path(__file__).resolve().parents[3]
    / "tests"
    / "conformance_vectors"
    / "kafka-protocol-binding.feature"
)


def canonical(event: Event) -> Event:
    """The event as binary mode returns it: every extension as its canonical string."""
    return event.replace(extensions={k: encode_attribute(v) for k, v in event.extensions.items()})


def sdk_message(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
    """Our record as the SDK's KafkaMessage."""
    return sdk_kafka.KafkaMessage(headers=dict(headers), key=key, value=value or b"")


# -- round trips ---------------------------------------------------------------------------


@given(events())
@settings(max_examples=300, deadline=None)
def test_binary_round_trip_keeps_the_event(event: Event) -> None:
    """to_binary then from_message gives the event back, extensions as strings."""
    key, value, headers = to_binary(event)
    assert from_message(key, value, headers) == canonical(event)


@given(events())
@settings(max_examples=300, deadline=None)
def test_structured_round_trip_keeps_the_event_exactly(event: Event) -> None:
    """to_structured then from_message gives the very same event, types included."""
    key, value, headers = to_structured(event)
    assert from_message(key, value, headers) == event


@given(events(), st.text(min_size=1, max_size=20))
@settings(max_examples=100, deadline=None)
def test_partitionkey_becomes_the_record_key(event: Event, pk: str) -> None:
    """The partitionkey is the record key in both modes and stays in the event."""
    event = event.replace(extensions={**event.extensions, "partitionkey": pk})
    for encode in (to_binary, to_structured):
        key, value, headers = encode(event)
        assert key == pk.encode("utf-8")
        assert from_message(key, value, headers).partitionkey == pk


def test_an_event_without_data_is_a_record_without_value() -> None:
    """Binary mode writes no value for an event without data, as the binding requires."""
    key, value, headers = to_binary(Event(type="t", source="/s", id="1"))
    assert value is None
    assert key is None
    assert from_message(key, value, headers).data is None
    assert from_message(key, b"", headers).data is None


def test_binary_headers_follow_the_spec() -> None:
    """Attributes are ce_ headers, datacontenttype is content-type, data is the value."""
    event = Event(
        type="com.example.someevent",
        source="/mycontext/subcontext",
        id="1234-1234-1234",
        time=datetime(2018, 4, 5, 3, 56, 24, tzinfo=UTC),
        datacontenttype="application/avro",
        data=b"\x00avro",
        extensions={"partitionkey": "mykey", "flag": True, "n": 7},
    )
    key, value, headers = to_binary(event)
    assert key == b"mykey"
    assert value == b"\x00avro"
    assert dict(headers) == {
        "ce_specversion": b"1.0",
        "ce_id": b"1234-1234-1234",
        "ce_source": b"/mycontext/subcontext",
        "ce_type": b"com.example.someevent",
        "content-type": b"application/avro",
        "ce_time": b"2018-04-05T03:56:24Z",
        "ce_partitionkey": b"mykey",
        "ce_flag": b"true",
        "ce_n": b"7",
    }


# -- the cloudevents SDK, both ways ------------------------------------------------------


@given(events(sdk_comparable=True))
@settings(max_examples=200, deadline=None)
def test_sdk_reads_our_binary_records(event: Event) -> None:
    """The SDK's from_binary parses what to_binary writes into the same event."""
    key, value, headers = to_binary(event)
    parsed = sdk_kafka.from_binary(sdk_message(key, value, headers), JSONFormat())
    assert Event.from_cloudevent(parsed) == event


@given(events(sdk_comparable=True))
@settings(max_examples=200, deadline=None)
def test_we_read_the_sdks_binary_records(event: Event) -> None:
    """from_message parses what the SDK's to_binary writes into the same event."""
    sdk = sdk_kafka.to_binary(event.to_cloudevent(), JSONFormat())
    headers = list(sdk.headers.items())
    key = sdk.key.encode() if isinstance(sdk.key, str) else sdk.key
    assert from_message(key, sdk.value, headers) == event
    ours = to_binary(event)
    assert dict(ours[2]) == sdk.headers
    if event.datacontenttype == "application/json":
        assert ours[1] is not None
        assert json.loads(ours[1]) == json.loads(sdk.value)
    else:
        assert ours[1] == (sdk.value or None)


@given(events(sdk_comparable=True))
@settings(max_examples=200, deadline=None)
def test_structured_mode_matches_the_sdk_both_ways(event: Event) -> None:
    """Structured records: same headers and JSON as the SDK's, and each reads the other's."""
    key, value, headers = to_structured(event)
    sdk = sdk_kafka.to_structured(event.to_cloudevent(), JSONFormat())
    assert dict(headers) == sdk.headers
    assert value is not None
    assert json.loads(value) == json.loads(sdk.value)
    assert (
        Event.from_cloudevent(sdk_kafka.from_kafka(sdk_message(key, value, headers), JSONFormat()))
        == event
    )
    assert from_message(None, sdk.value, list(sdk.headers.items())) == event


def test_boolean_extensions_take_the_specs_canonical_form() -> None:
    """We write booleans as 'true'/'false' (the spec's canonical form); the SDK's 'True'
    still reads back as the string it is."""
    event = Event(type="t", source="/s", id="1", extensions={"flag": True})
    assert dict(to_binary(event)[2])["ce_flag"] == b"true"
    sdk = sdk_kafka.to_binary(event.to_cloudevent(), JSONFormat())
    assert from_message(None, sdk.value, list(sdk.headers.items())).extensions["flag"] == "True"


# -- the spec's scenarios (tests/conformance_vectors/kafka-protocol-binding.feature) -------


def _scenarios() -> list[tuple[str, bytes, list[tuple[str, bytes]], dict[str, str], Any]]:
    """(name, value, headers, attributes, data) for each scenario, outlines expanded."""
    text = FEATURE.read_text(encoding="utf-8")
    out = []
    for block in re.split(r"\n\s*Scenario(?: Outline)?: ", text)[1:]:
        name = block.splitlines()[0].strip()
        docs = re.findall(r'"""\n(.*?)\n\s*"""', block, flags=re.S)
        tables = re.findall(r"((?:\s*\|.*\|\s*\n)+)", block + "\n")
        rows = [
            [
                [cell.strip() for cell in line.strip().strip("|").split("|")]
                for line in t.strip().splitlines()
            ]
            for t in tables
        ]
        headers_rows, attribute_rows = rows[0][1:], rows[1][1:]
        examples = (
            [dict(zip(rows[2][0], r, strict=True)) for r in rows[2][1:]] if len(rows) > 2 else [{}]
        )
        for example in examples:

            def fill(s: str, example: dict[str, str] = example) -> str:
                for k, v in example.items():
                    s = s.replace(f"<{k}>", v)
                return s

            out.append(
                (
                    fill(name),
                    docs[0].encode("utf-8"),
                    [(k, fill(v).encode("utf-8")) for k, v in headers_rows],
                    dict(attribute_rows),
                    json.loads(docs[1]),
                )
            )
    return out


SCENARIOS = _scenarios() if FEATURE.exists() else []


@pytest.mark.skipif(not SCENARIOS, reason=f"{FEATURE} is missing")
@pytest.mark.parametrize(
    ("name", "value", "headers", "attributes", "data"), SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
def test_the_specs_scenarios(
    name: str, value: bytes, headers: list[tuple[str, bytes]], attributes: dict[str, str], data: Any
) -> None:
    """Each scenario of the CloudEvents Kafka binding's feature file parses as it says."""
    event = from_message(None, value, headers)
    got = {k: encode_attribute(v) for k, v in event.attributes().items()}
    assert got == attributes
    assert event.data == data


def test_the_feature_file_has_every_scenario() -> None:
    """The parser found the binary scenario and both structured examples."""
    assert len(SCENARIOS) == 3


# -- telling modes apart, and records that are not CloudEvents -------------------------


def test_content_mode_follows_the_content_type_then_the_headers() -> None:
    """content-type application/cloudevents+json is structured, whatever else is there."""
    assert (
        content_mode([("Content-Type", b"Application/CloudEvents+JSON; charset=UTF-8")])
        == "structured"
    )
    assert (
        content_mode([("ce_id", b"1"), ("content-type", b"application/cloudevents+json")])
        == "structured"
    )
    assert content_mode([("CE_ID", b"1"), ("content-type", b"application/json")]) == "binary"
    assert content_mode([("content-type", b"application/cloudevents+avro")]) == "foreign"
    assert content_mode([("trace", b"x"), ("content-type", None)]) == "foreign"
    assert content_mode([]) == "foreign"


def test_a_foreign_record_is_wrapped_by_the_documented_rule() -> None:
    """A plain record becomes an event named after its position, never an error."""
    event = from_message(
        b"user-7",
        b'{"amount": 3}',
        [("content-type", b"application/json"), ("trace", b"abc")],
        topic="orders",
        partition=2,
        offset=41,
        timestamp=1_700_000_000.5,
    )
    assert event == Event(
        id="orders-2-41",
        source="kafka://orders",
        type=MESSAGE_TYPE,
        time=datetime.fromtimestamp(1_700_000_000.5, UTC),
        datacontenttype="application/json",
        data={"amount": 3},
        extensions={"partitionkey": "user-7"},
    )


def test_a_foreign_record_keeps_its_bytes() -> None:
    """A body that is not JSON under no content type stays bytes; no key, no time."""
    event = wrap_message(None, b"\xff\x00raw", [], topic="t", partition=0, offset=0)
    assert event.data == b"\xff\x00raw"
    assert event.time is None
    assert event.datacontenttype is None
    assert event.extensions == {}


@pytest.mark.parametrize("timestamp", [300_000_000_000.0, 253_402_300_800.0, -1e12, 1e300])
def test_a_timestamp_no_datetime_holds_gives_no_time(timestamp: float) -> None:
    """Kafka stores any 64-bit CreateTime: one past year 9999 (or before year 1) is read
    as no time, not an error that would strand the record."""
    event = from_message(None, b"x", [], topic="t", partition=0, offset=3, timestamp=timestamp)
    assert event.id == "t-0-3"
    assert event.time is None
    assert event.data == b"x"


def test_a_foreign_record_needs_its_position() -> None:
    """Without topic, partition and offset a foreign record cannot be named: it says so."""
    with pytest.raises(EventValidationError, match="not a CloudEvent"):
        from_message(None, b"plain", [])


def test_a_broken_cloudevent_raises_and_can_be_wrapped() -> None:
    """A record with ce_ headers but no ce_id names the missing attribute; wrapping keeps it."""
    headers = [("ce_specversion", b"1.0"), ("ce_source", b"/s"), ("ce_type", b"t")]
    with pytest.raises(EventValidationError) as info:
        from_message(None, b"{}", headers, topic="t", partition=0, offset=5)
    assert info.value.attribute == "id"
    wrapped = wrap_message(
        None, b"{}", headers, topic="t", partition=0, offset=5, error=str(info.value)
    )
    assert wrapped.id == "t-0-5"
    assert "ce_id" in str(wrapped.extensions["cloudeventerror"])


@pytest.mark.parametrize(
    ("headers", "value", "attribute"),
    [
        (
            [("ce_specversion", b"0.3"), ("ce_id", b"1"), ("ce_source", b"/s"), ("ce_type", b"t")],
            b"",
            "specversion",
        ),
        (
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"1"),
                ("ce_source", b"/s"),
                ("ce_type", b"t"),
                ("ce_time", b"yesterday"),
            ],
            b"",
            "time",
        ),
        (
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"\xff"),
                ("ce_source", b"/s"),
                ("ce_type", b"t"),
            ],
            b"",
            "id",
        ),
        ([("content-type", b"application/cloudevents+json")], b'{"id": 1}', None),
    ],
    ids=["specversion", "time", "not-utf8", "structured-not-an-event"],
)
def test_broken_cloudevents_are_refused_with_a_reason(
    headers: list[tuple[str, bytes]], value: bytes, attribute: str | None
) -> None:
    """Each way a record can break the spec raises EventValidationError."""
    with pytest.raises(EventValidationError) as info:
        from_message(None, value, headers, topic="t", partition=0, offset=0)
    if attribute is not None:
        assert info.value.attribute == attribute


def test_the_key_fills_in_a_missing_partitionkey_only() -> None:
    """A record key becomes partitionkey when the event has none; the event's own wins."""
    base = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"/s"), ("ce_type", b"t")]
    assert from_message(b"k1", None, base).partitionkey == "k1"
    assert from_message(b"k1", None, [*base, ("ce_partitionkey", b"own")]).partitionkey == "own"
    assert from_message(b"\xffk", None, base).partitionkey == "\ufffdk"
    structured = to_structured(Event(type="t", source="/s", id="1"))[1]
    assert (
        from_message(
            b"k2", structured, [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
        ).partitionkey
        == "k2"
    )


def test_header_names_are_matched_without_case() -> None:
    """CE_ID and Content-Type count as ce_id and content-type."""
    event = from_message(
        None,
        b"hello",
        [
            ("CE_SPECVERSION", b"1.0"),
            ("Ce_Id", b"1"),
            ("ce_source", b"/s"),
            ("ce_type", b"t"),
            ("Content-Type", b"text/plain"),
        ],
    )
    assert (event.id, event.datacontenttype, event.data) == ("1", "text/plain", "hello")


@pytest.mark.parametrize("encode", [to_binary, to_structured])
def test_an_event_that_cannot_be_utf8_is_refused(encode: Any) -> None:
    """A lone surrogate cannot travel as UTF-8: EventValidationError, not UnicodeError."""
    with pytest.raises(EventValidationError, match="UTF-8"):
        encode(Event(type="t", source="/s", subject="a\udc80b"))


# -- the fast path for common binary records -------------------------------------------

_HEADER_NAMES = [
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_subject",
    "ce_dataschema",
    "ce_datacontenttype",
    "content-type",
    "ce_partitionkey",
    "ce_traceparent",
    "ce_count",
    "ce_data",
    "ce_",
    "ce_a-b",
    "ce_123",
    "CE_ID",
    "Content-Type",
    "ce_partitionKey",
    "x-trace",
    "X-Trace",
    "123",
]
_HEADER_VALUES = [
    None,
    b"",
    b"1.0",
    b"0.3",
    b"/s",
    b"t",
    b"\xff",
    "\u00e9t\u00e9".encode(),
    b"2024-05-01T12:00:00Z",
    b"2024-05-01T12:00:00.123456+02:00",
    b"2024-05-01T12:00:00",
    b"2024-05-01T12:00:00.123456789Z",
    b"2024-05-01",
    b"yesterday",
    b"application/json",
    b"text/plain; charset=utf-8",
    b"application/octet-stream",
    b" Application/CloudEvents+JSON ; charset=utf-8",
    b"\xc2\xa0application/cloudevents+json",
]
_VALID = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"/s"), ("ce_type", b"t")]


@st.composite
def records(draw: st.DrawFn) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]:
    """Records near and far from what producers write: valid cores with odd extras,
    missing or repeated headers, other cases, bad values."""
    headers: list[tuple[str, bytes | None]] = []
    if draw(st.booleans()):
        headers += _VALID
    extra = st.tuples(st.sampled_from(_HEADER_NAMES), st.sampled_from(_HEADER_VALUES))
    headers += draw(st.lists(extra, max_size=5))
    headers = draw(st.permutations(headers))
    key = draw(st.sampled_from([None, b"", b"k1", b"\xffk"]))
    value = draw(
        st.sampled_from([None, b"", b'{"a": 1}', b'"text"', b"not json", b"\xff\xfe", b"42"])
    )
    return key, value, headers


class _Headers:
    """The same headers as an iterable that is neither a list nor a tuple: the general path."""

    def __init__(self, headers: list[tuple[str, bytes | None]]) -> None:
        self._headers = headers

    def __iter__(self) -> Any:
        return iter(self._headers)


def _read(
    key: bytes | None, value: bytes | None, headers: Any
) -> tuple[str, Any, list[str], type] | tuple[str, str, str | None]:
    try:
        event = from_message(key, value, headers, topic="t", partition=1, offset=2, timestamp=3.0)
    except EventValidationError as exc:
        return ("error", str(exc), exc.attribute)
    return ("event", event, list(event.extensions), type(event.data))


@given(records())
@settings(max_examples=1500, deadline=None)
def test_the_fast_path_reads_every_record_as_the_general_path_does(
    record: tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]],
) -> None:
    """A list or tuple of headers (the fast path) gives the event, the extension order and
    the error that any other iterable of the same headers (the general path) gives."""
    key, value, headers = record
    general = _read(key, value, _Headers(headers))
    assert _read(key, value, headers) == general
    assert _read(key, value, tuple(headers)) == general


def test_the_fast_path_reads_what_to_binary_writes() -> None:
    """Records as eventmesh writes them come back equal, extensions in their order."""
    event = Event(
        type="t",
        source="/s",
        subject="sub",
        dataschema="https://example.com/s",
        datacontenttype="application/json",
        data={"a": [1, 2]},
        extensions={"zeta": "1", "partitionkey": "k", "alpha": "2"},
    )
    key, value, headers = to_binary(event)
    back = from_message(key, value, tuple(headers))
    assert back == event
    assert list(back.extensions) == ["zeta", "partitionkey", "alpha"]


def test_an_invalid_extension_name_is_refused_after_valid_ones_were_seen() -> None:
    """Names that passed are remembered; a bad one still raises, every time."""
    base = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"/s"), ("ce_type", b"t")]
    for _ in range(2):
        assert from_message(None, None, [*base, ("ce_region", b"eu")]).extensions == {
            "region": "eu"
        }
        for bad in ("ce_a-b", "ce_data", "ce_"):
            with pytest.raises(EventValidationError):
                from_message(None, None, [*base, (bad, b"x")])
