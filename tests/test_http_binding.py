"""The HTTP protocol binding: round trips, the cloudevents SDK both ways, the spec's vectors
and scenarios, percent-encoding, and every way a request is refused."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudevents.core.bindings import http as sdk_http
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from eventmesh.bindings import decode_data, encode_attribute, is_json_media_type
from eventmesh.bindings.http import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    content_mode,
    from_http,
    from_http_one,
    to_batch,
    to_binary,
    to_structured,
)
from eventmesh.errors import ContentTypeError, EventTooLargeError, EventValidationError
from eventmesh.event import Event, encode_json
from eventmesh.testing.strategies import events

VECTORS = Path(__file__).parent / "conformance_vectors"
FEATURE = VECTORS / "http-protocol-binding.feature"

BASE = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
"""The headers of the smallest valid binary-mode request."""


def canonical(event: Event) -> Event:
    """The event as binary mode returns it: every extension as its canonical string."""
    return event.replace(extensions={k: encode_attribute(v) for k, v in event.extensions.items()})


def sdk_message(headers: dict[str, str], body: bytes) -> Any:
    """Our message as the SDK's HTTPMessage."""
    return sdk_http.HTTPMessage(headers=dict(headers), body=body)


def read_by_sdk(headers: dict[str, str], body: bytes, like: Event) -> Event:
    """What the SDK reads from our message, as an Event (its invented time dropped)."""
    event = Event.from_cloudevent(sdk_http.from_http_event(sdk_message(headers, body)))
    return event.replace(time=None) if like.time is None else event


def one(exc: pytest.ExceptionInfo[EventValidationError]) -> tuple[str | None, int | None]:
    """The attribute and batch index an error names."""
    return exc.value.attribute, getattr(exc.value, "index", None)


# -- round trips ----------------------------------------------------------------------------


@given(events())
@settings(max_examples=300, deadline=None)
def test_binary_round_trip_keeps_the_event(event: Event) -> None:
    """to_binary then from_http gives the event back, extensions as strings."""
    headers, body = to_binary(event)
    assert from_http(headers, body) == [canonical(event)]
    assert from_http_one(headers, body) == canonical(event)


@given(events())
@settings(max_examples=300, deadline=None)
def test_binary_headers_are_printable_ascii(event: Event) -> None:
    """Every header value to_binary writes is printable ASCII without space, '"' or '%',
    except for the percent signs of its escapes."""
    headers, _ = to_binary(event)
    for name, value in headers.items():
        if name == "content-type":
            continue
        assert name.startswith("ce-")
        assert re.fullmatch(r"(?:[!#$&-~]|%[0-9A-F]{2})*", value), (name, value)


@given(events())
@settings(max_examples=300, deadline=None)
def test_structured_round_trip_keeps_the_event_exactly(event: Event) -> None:
    """to_structured then from_http gives the very same event, types included."""
    headers, body = to_structured(event)
    assert headers == {"content-type": STRUCTURED_CONTENT_TYPE}
    assert from_http(headers, body) == [event]


@given(st.lists(events(), max_size=6))
@settings(max_examples=150, deadline=None)
def test_batch_round_trip_keeps_every_event(batch: list[Event]) -> None:
    """to_batch then from_http gives the same events in order, with or without a limit."""
    headers, body = to_batch(batch)
    assert headers == {"content-type": BATCH_CONTENT_TYPE}
    assert from_http(headers, body) == batch
    # A limit below the whole body but above each event reads the array item by item.
    largest = max((len(encode_json(e)) for e in batch), default=0)
    assert from_http(headers, body, max_event_size=largest) == batch


def test_an_empty_batch_is_no_events() -> None:
    """The binding allows an empty batch: it reads as an empty list."""
    headers, body = to_batch([])
    assert body == b"[]"
    assert from_http(headers, body) == []


def test_an_event_without_data_has_an_empty_body() -> None:
    """Binary mode writes no body and no content-type for an event without data."""
    headers, body = to_binary(Event(type="t", source="/s", id="1", time=None))
    assert body == b""
    assert headers == BASE
    assert from_http_one(headers, body).data is None


def test_binary_headers_follow_the_spec() -> None:
    """Attributes are ce- headers, datacontenttype is content-type, data is the body."""
    event = Event(
        type="com.example.someevent",
        source="/mycontext/subcontext",
        id="1234-1234-1234",
        time=datetime(2018, 4, 5, 3, 56, 24, tzinfo=UTC),
        subject="Euro € 😀",
        datacontenttype="application/avro",
        data=b"\x00avro",
        extensions={"partitionkey": "my key", "flag": True, "n": 7},
    )
    headers, body = to_binary(event)
    assert body == b"\x00avro"
    assert headers == {
        "ce-specversion": "1.0",
        "ce-id": "1234-1234-1234",
        "ce-source": "/mycontext/subcontext",
        "ce-type": "com.example.someevent",
        "content-type": "application/avro",
        "ce-subject": "Euro%20%E2%82%AC%20%F0%9F%98%80",
        "ce-time": "2018-04-05T03:56:24Z",
        "ce-partitionkey": "my%20key",
        "ce-flag": "true",
        "ce-n": "7",
    }


# -- percent-encoding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("plain-value_1.2~!#$&'()*+,/:;<=>?@[]^`{|}", "plain-value_1.2~!#$&'()*+,/:;<=>?@[]^`{|}"),
        ("a b", "a%20b"),
        ('say "hi"', "say%20%22hi%22"),
        ("100%", "100%25"),
        ("%20", "%2520"),
        ("tab\there\nnewline", "tab%09here%0Anewline"),
        ("\x7f\x80", "%7F%C2%80"),
        ("Grüße, 東京", "Gr%C3%BC%C3%9Fe,%20%E6%9D%B1%E4%BA%AC"),
        ("Euro € 😀", "Euro%20%E2%82%AC%20%F0%9F%98%80"),
    ],
)
def test_awkward_values_are_percent_encoded_and_come_back(value: str, encoded: str) -> None:
    """Space, '"', '%', controls and non-ASCII are encoded as UTF-8 bytes, and decoded
    again, by us and by the SDK."""
    event = Event(type=value, source=value, id=value, subject=value, extensions={"x": value})
    headers, body = to_binary(event)
    for name in ("ce-id", "ce-source", "ce-type", "ce-subject", "ce-x"):
        assert headers[name] == encoded
    assert from_http_one(headers, body) == event
    assert read_by_sdk(headers, body, event) == event


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("caf%c3%a9", "café"),  # lower-case hex is accepted
        ("%61bc", "abc"),  # needlessly encoded characters are accepted
        ("café", "café"),  # raw UTF-8 that a lax client did not encode
        ('"a b \\"quoted\\" \\\\ value"', 'a b "quoted" \\ value'),  # RFC 7230 quoted-string
        ('"50%25"', "50%"),  # quoted, then percent-decoded once
        ("%2541", "%41"),  # one round of decoding only
        ('a"b', 'a"b'),  # a stray quote is kept
    ],
)
def test_header_values_are_unquoted_then_percent_decoded(header: str, value: str) -> None:
    """A ce- value is unescaped as a quoted-string when it is one, then decoded once."""
    event = from_http_one({**BASE, "ce-subject": header}, b"")
    assert event.subject == value


@pytest.mark.parametrize("header", ["%C0%A0", "%FF", "%E2%82", "\udcff"])
def test_header_values_that_are_not_utf8_are_refused(header: str) -> None:
    """An overlong, stray or truncated UTF-8 sequence is refused, naming the header."""
    with pytest.raises(EventValidationError, match="ce-subject") as info:
        from_http_one({**BASE, "ce-subject": header}, b"")
    assert info.value.attribute == "subject"


@pytest.mark.parametrize("encode", [to_binary, to_structured])
def test_an_event_that_cannot_be_utf8_is_refused(encode: Any) -> None:
    """A lone surrogate cannot travel as UTF-8: EventValidationError, not UnicodeError."""
    with pytest.raises(EventValidationError, match=r"UTF-8|Unicode"):
        encode(Event(type="t", source="/s", subject="a\udc80b"))


def test_a_content_type_that_cannot_be_a_header_is_refused() -> None:
    """A datacontenttype with a line break or non-ASCII would break the header: refused."""
    for bad in ("text/plain\r\nX-Injected: 1", "text/plaín"):
        with pytest.raises(EventValidationError) as info:
            to_binary(Event(type="t", source="/s", datacontenttype=bad, data="x"))
        assert info.value.attribute == "datacontenttype"


# -- the cloudevents SDK, both ways -----------------------------------------------------------


@given(events(sdk_comparable=True))
@settings(max_examples=200, deadline=None)
def test_we_read_what_the_sdk_writes(event: Event) -> None:
    """from_http reads the SDK's binary and structured messages into the same event."""
    sdk_event = event.to_cloudevent()
    binary = sdk_http.to_binary_event(sdk_event)
    assert from_http(binary.headers, binary.body) == [event]
    structured = sdk_http.to_structured_event(sdk_event)
    assert from_http(structured.headers, structured.body) == [event]


@given(events(sdk_comparable=True))
@settings(max_examples=200, deadline=None)
def test_the_sdk_reads_what_we_write(event: Event) -> None:
    """The SDK's from_http_event reads to_binary and to_structured into the same event."""
    for encode in (to_binary, to_structured):
        headers, body = encode(event)
        assert read_by_sdk(headers, body, event) == event


@given(events(sdk_comparable=True))
@settings(max_examples=100, deadline=None)
def test_binary_headers_match_the_sdks(event: Event) -> None:
    """Our binary headers are the SDK's, value for value, and the bodies hold the same data."""
    headers, body = to_binary(event)
    sdk = sdk_http.to_binary_event(event.to_cloudevent())
    assert headers == sdk.headers
    if event.datacontenttype == "application/json":
        assert json.loads(body) == json.loads(sdk.body)
    else:
        assert body == sdk.body


def test_boolean_extensions_take_the_specs_canonical_form() -> None:
    """We write booleans as 'true' (the spec's canonical form); the SDK's 'True' still reads
    back as the string it is."""
    event = Event(type="t", source="/s", id="1", extensions={"flag": True})
    assert to_binary(event)[0]["ce-flag"] == "true"
    sdk = sdk_http.to_binary_event(event.to_cloudevent())
    assert from_http_one(sdk.headers, sdk.body).extensions["flag"] == "True"


# -- the conformance vectors (tests/conformance_vectors/v1*.yaml) ----------------------------


def _vectors() -> list[tuple[str, str, Event, dict[str, str]]]:
    """(name, mode, event, transport headers) for each event of the conformance vectors,
    loaded as tests/test_event.py loads them."""
    out = []
    for name in ("v1.yaml", "v1_minimum.yaml"):
        docs = yaml.load_all((VECTORS / name).read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
        for i, doc in enumerate(docs):
            attrs = dict(doc["ContextAttributes"])
            extensions = attrs.pop("Extensions", {}) or {}
            body = doc.get("Data", "").encode("utf-8")
            event = Event.from_dict({**attrs, **extensions})
            event = event.replace(data=decode_data(body, attrs.get("datacontenttype")))
            mode = doc.get("Mode", "binary")
            out.append((f"{name}#{i}", mode, event, dict(doc.get("TransportExtensions") or {})))
    return out


VECTOR_EVENTS = _vectors()


@pytest.mark.parametrize(
    ("name", "mode", "event", "transport"), VECTOR_EVENTS, ids=[v[0] for v in VECTOR_EVENTS]
)
def test_conformance_vectors_round_trip(
    name: str, mode: str, event: Event, transport: dict[str, str]
) -> None:
    """Each vector survives to_binary, to_structured and to_batch unchanged, and reads
    from the SDK's message in the vector's mode, transport headers and all."""
    headers, body = to_binary(event)
    assert from_http({**transport, **headers}, body) == [canonical(event)]
    headers, body = to_structured(event)
    assert from_http({**transport, **headers}, body) == [event]
    headers, body = to_batch([event, event])
    assert from_http(headers, body) == [event, event]
    sdk_event = event.to_cloudevent()
    if mode == "structured":
        message = sdk_http.to_structured_event(sdk_event)
    elif isinstance(event.data, dict | bytes | None) or (
        isinstance(event.data, str) and not is_json_media_type(event.datacontenttype)
    ):
        message = sdk_http.to_binary_event(sdk_event)
    else:
        # The SDK writes other JSON data (a list) with str() in binary mode, and a JSON
        # string without its quotes (not JSON, so refused); use ours.
        message = sdk_message(*to_binary(event))
    got = from_http_one({**transport, **message.headers}, message.body)
    if event.time is None:  # the SDK gives every event a time
        got = got.replace(time=None)
    assert got == (canonical(event) if mode == "binary" else event)


def test_conformance_vectors_travel_as_one_batch() -> None:
    """All vectors together make one batch that reads back unchanged."""
    batch = [v[2] for v in VECTOR_EVENTS]
    assert len(batch) == 8
    assert from_http(*to_batch(batch)) == batch


# -- the spec's scenarios (tests/conformance_vectors/http-protocol-binding.feature) ----------


def _scenarios() -> list[tuple[str, dict[str, str], bytes, dict[str, str], Any]]:
    """(name, headers, body, attributes, data) for each scenario, outlines expanded."""
    text = FEATURE.read_text(encoding="utf-8")
    out = []
    for block in re.split(r"\n\s*Scenario(?: Outline)?: ", text)[1:]:
        name = block.splitlines()[0].strip()
        request, data = re.findall(r'"""\n(.*?)\n\s*"""', block, flags=re.S)
        tables = re.findall(r"((?:\s*\|.*\|\s*\n)+)", block + "\n")
        rows = [
            [
                [cell.strip() for cell in line.strip().strip("|").split("|")]
                for line in t.strip().splitlines()
            ]
            for t in tables
        ]
        attribute_rows = rows[0][1:]
        examples = (
            [dict(zip(rows[1][0], r, strict=True)) for r in rows[1][1:]] if len(rows) > 1 else [{}]
        )
        head, _, body = re.sub(r"(?m)^ {8}", "", request).partition("\n\n")
        for example in examples:

            def fill(s: str, example: dict[str, str] = example) -> str:
                for k, v in example.items():
                    s = s.replace(f"<{k}>", v)
                return s

            headers = {
                k.strip(): fill(v).strip()
                for k, v in (line.split(":", 1) for line in head.splitlines()[1:])
            }
            out.append(
                (
                    fill(name),
                    headers,
                    body.encode("utf-8"),
                    {k: fill(v) for k, v in attribute_rows},
                    json.loads(data),
                )
            )
    return out


SCENARIOS = _scenarios()


@pytest.mark.parametrize(
    ("name", "headers", "body", "attributes", "data"), SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
def test_the_specs_scenarios(
    name: str, headers: dict[str, str], body: bytes, attributes: dict[str, str], data: Any
) -> None:
    """Each scenario of the CloudEvents HTTP binding's feature file parses as it says, and
    the event it gives survives our encoding in every mode."""
    event = from_http_one(headers, body)
    got = {k: encode_attribute(v) for k, v in event.attributes().items()}
    assert got == attributes
    assert event.data == data
    for encode in (to_binary, to_structured):
        assert from_http_one(*encode(event)) == event
    assert from_http(*to_batch([event])) == [event]


def test_the_feature_file_has_every_scenario() -> None:
    """The parser found both binary and both structured examples."""
    assert [s[0] for s in SCENARIOS] == [
        "Binary content mode (application/json)",
        "Binary content mode (application/json; charset=utf-8)",
        "Structured content mode (application/cloudevents+json)",
        "Structured content mode (application/cloudevents+json; charset=utf-8)",
    ]


# -- telling modes apart ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "mode"),
    [
        ({"Content-Type": "Application/CloudEvents+JSON; charset=UTF-8"}, "structured"),
        ({**BASE, "content-type": "application/cloudevents+json"}, "structured"),
        ({"CONTENT-TYPE": " application/cloudevents-batch+json ;charset=utf-8"}, "batch"),
        ({**BASE, "content-type": "application/json"}, "binary"),
        ({"Ce-Specversion": "1.0"}, "binary"),
        ({"ce-id": "1"}, "binary"),  # binary, so that reading names the missing specversion
        ({"content-type": "application/cloudevents+xml"}, None),
        ({"content-type": "application/cloudevents+avro", **BASE}, None),
        ({"content-type": "application/cloudevents"}, None),
        ({"content-type": "application/json", "x-ce-id": "1"}, None),
        ({}, None),
    ],
)
def test_content_mode_follows_the_content_type_then_the_headers(
    headers: dict[str, str], mode: str | None
) -> None:
    """Content-Type decides structured and batch; otherwise any ce- header means binary."""
    assert content_mode(headers) == mode
    assert content_mode(CIMultiDictProxy(CIMultiDict(headers))) == mode


def test_header_names_are_matched_without_case() -> None:
    """Any spelling of ce- and Content-Type counts, in a dict or aiohttp's CIMultiDictProxy."""
    pairs = [
        ("Host", "example.com"),
        ("CE-SPECVERSION", "1.0"),
        ("Ce-Id", "1"),
        ("ce-Source", "/s"),
        ("ce-type", "t"),
        ("Ce-Myext", "v"),
        ("Content-Type", "text/plain"),
    ]
    for headers in (dict(pairs), CIMultiDictProxy(CIMultiDict(pairs))):
        event = from_http_one(headers, b"hello")
        assert (event.id, event.datacontenttype, event.data) == ("1", "text/plain", "hello")
        assert event.extensions == {"myext": "v"}


def test_a_ce_datacontenttype_header_is_read_when_there_is_no_content_type() -> None:
    """The binding forbids ce-datacontenttype, but a producer that sends it is understood;
    Content-Type wins when both are there."""
    body = b'{"a": 1}'
    only = from_http_one({**BASE, "ce-datacontenttype": "application/json"}, body)
    assert (only.datacontenttype, only.data) == ("application/json", {"a": 1})
    both = {**BASE, "ce-datacontenttype": "application/json", "content-type": "text/plain"}
    assert from_http_one(both, body).datacontenttype == "text/plain"


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"content-type": "application/json"}, "not a CloudEvent: send ce- headers"),
        ({}, "not a CloudEvent"),
        ({"content-type": "application/cloudevents+xml"}, "event format eventmesh does not"),
        ({"content-type": "application/cloudevents+avro", **BASE}, "cloudevents\\+avro"),
    ],
)
def test_what_is_not_a_cloudevent_we_read_is_a_415(headers: dict[str, str], message: str) -> None:
    """No ce- headers, or a CloudEvents format other than JSON: ContentTypeError."""
    for read in (from_http, from_http_one):
        with pytest.raises(ContentTypeError, match=message):
            read(headers, b'{"a": 1}')


def test_from_http_one_refuses_a_batch() -> None:
    """A batch where one event is expected is ContentTypeError, saying to send one."""
    headers, body = to_batch([Event(type="t", source="/s")])
    with pytest.raises(ContentTypeError, match="send one event"):
        from_http_one(headers, body)


@pytest.mark.parametrize("missing", ["specversion", "id", "source", "type"])
def test_a_missing_required_header_is_named(missing: str) -> None:
    """Binary mode without one of the required ce- headers names the attribute."""
    headers = {k: v for k, v in BASE.items() if k != f"ce-{missing}"}
    with pytest.raises(EventValidationError, match=f"ce-{missing}") as info:
        from_http_one(headers, b"")
    assert one(info) == (missing, None)


@pytest.mark.parametrize(
    ("extra", "attribute"),
    [
        ({"ce-id": ""}, "id"),
        ({"ce-source": ""}, "source"),
        ({"ce-type": ""}, "type"),
        ({"ce-specversion": "0.3"}, "specversion"),
        ({"ce-time": "yesterday"}, "time"),
        ({"ce-time": "2018-04-05T03:56:24"}, "time"),  # no time zone
        ({"ce-subject": ""}, "subject"),
        ({"ce-bad_name": "x"}, "bad_name"),
    ],
)
def test_invalid_binary_attributes_are_named(extra: dict[str, str], attribute: str) -> None:
    """An empty, malformed or unsupported attribute raises EventValidationError naming it."""
    with pytest.raises(EventValidationError) as info:
        from_http({**BASE, **extra}, b"")
    assert one(info) == (attribute, None)


@pytest.mark.parametrize(
    ("body", "attribute"),
    [
        (b'{"specversion": "1.0", "source": "/s", "type": "t"}', "id"),
        (b'{"specversion": "1.0", "id": "1", "type": "t"}', "source"),
        (b'{"specversion": "1.0", "id": "1", "source": "/s"}', "type"),
        (b'{"id": "1", "source": "/s", "type": "t"}', "specversion"),
        (b'{"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}', "specversion"),
        (b'{"specversion": "1.0", "id": 5, "source": "/s", "type": "t"}', "id"),
        (b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "time": "x"}', "time"),
        (
            b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"!!"}',
            "data_base64",
        ),
    ],
)
def test_invalid_structured_events_are_named(body: bytes, attribute: str) -> None:
    """A structured event that breaks the spec names the attribute."""
    with pytest.raises(EventValidationError) as info:
        from_http({"content-type": STRUCTURED_CONTENT_TYPE}, body)
    assert one(info) == (attribute, None)


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        (STRUCTURED_CONTENT_TYPE, b'{"specversion": "1.0",', "not valid JSON"),
        (STRUCTURED_CONTENT_TYPE, b"", "body is empty"),
        (STRUCTURED_CONTENT_TYPE, b"[]", "must be an object"),
        (BATCH_CONTENT_TYPE, b'[{"specversion": "1.0"', "not valid JSON"),
        (BATCH_CONTENT_TYPE, b"", "not valid JSON"),
        (BATCH_CONTENT_TYPE, b'{"specversion": "1.0"}', "must be a JSON array.*got an object"),
        (BATCH_CONTENT_TYPE, b'"events"', "must be a JSON array.*got a string"),
        (BATCH_CONTENT_TYPE, b"null", "must be a JSON array.*got true, false or null"),
    ],
)
def test_broken_json_is_refused(content_type: str, body: bytes, message: str) -> None:
    """A body that is not JSON, or not the shape the mode needs, is EventValidationError."""
    # A batch is parsed whole under no limit (or one above its size), item by item under 4.
    for limit in (None, 4) if content_type == BATCH_CONTENT_TYPE else (None,):
        with pytest.raises(EventValidationError, match=message) as info:
            from_http({"content-type": content_type}, body, max_event_size=limit)
        assert not isinstance(info.value, ContentTypeError | EventTooLargeError)
        assert getattr(info.value, "index", None) is None


def _event_json(i: int) -> bytes:
    return encode_json(Event(type="t", source="/s", id=str(i)))


@pytest.mark.parametrize(
    ("item", "attribute", "message"),
    [
        (b"42", None, "must be an object"),
        (b"null", None, "must be an object"),
        (b'{"specversion": "1.0", "id": "x", "source": "/s"}', "type", "'type' is missing"),
        (b'{"specversion": "1.0", "id": "x", "source": "/s", "type": "t", "time": 1}', "time", ""),
    ],
)
def test_a_bad_event_in_a_batch_is_named_by_index(
    item: bytes, attribute: str | None, message: str
) -> None:
    """The error says which event of the batch is wrong, in its message and as exc.index."""
    body = b"[" + _event_json(0) + b"," + _event_json(1) + b", " + item + b"]"
    for limit in (None, 200):  # the whole array at once, or item by item
        with pytest.raises(EventValidationError, match=f"event 2 of the batch: .*{message}") as e:
            from_http({"content-type": BATCH_CONTENT_TYPE}, body, max_event_size=limit)
        assert one(e) == (attribute, 2)


def test_the_size_limit_counts_a_binary_events_body_and_headers() -> None:
    """Binary: body plus ce- and content-type headers; at the limit passes, above is 413."""
    headers = {**BASE, "content-type": "text/plain", "Host": "not counted"}
    body = b"x" * 100
    size = 100 + sum(len(k) + len(v) for k, v in headers.items() if k != "Host")
    assert from_http_one(headers, body, max_event_size=size).data == "x" * 100
    with pytest.raises(EventTooLargeError, match=f"{size} bytes, above the limit") as info:
        from_http_one(headers, body, max_event_size=size - 1)
    assert one(info) == (None, None)


def test_the_size_limit_counts_a_structured_events_body() -> None:
    """Structured: the body; at the limit passes, above is 413."""
    headers, body = to_structured(Event(type="t", source="/s", data="x" * 100))
    assert len(from_http(headers, body, max_event_size=len(body))) == 1
    with pytest.raises(EventTooLargeError, match=f"{len(body)} bytes"):
        from_http(headers, body, max_event_size=len(body) - 1)


def test_the_size_limit_counts_each_event_of_a_batch() -> None:
    """Batch: each event's own JSON text; a batch larger than the limit is fine, an event
    above it is 413 naming its index."""
    small = [Event(type="t", source="/s", id=str(i), data="x" * 50) for i in range(5)]
    big = Event(type="t", source="/s", id="big", data="y" * 500)
    limit = len(encode_json(small[0]))
    headers, body = to_batch(small)
    assert len(body) > limit
    assert from_http(headers, body, max_event_size=limit) == small
    headers, body = to_batch([*small[:3], big, *small[3:]])
    with pytest.raises(EventTooLargeError, match="event 3 of the batch is") as info:
        from_http(headers, body, max_event_size=limit)
    assert one(info) == (None, 3)


def test_to_batch_names_the_event_it_cannot_encode() -> None:
    """An event whose data is not JSON-encodable makes to_batch raise with its index."""
    events = [Event(type="t", source="/s"), Event(type="t", source="/s", data={"x": object()})]
    with pytest.raises(EventValidationError, match="event 1 of the batch") as info:
        to_batch(events)
    assert one(info) == ("data", 1)
    with pytest.raises(EventValidationError) as single:
        to_structured(events[1])
    assert one(single) == ("data", None)
