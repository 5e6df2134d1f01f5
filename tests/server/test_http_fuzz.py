"""Hostile input at the HTTP ingress: malformed headers, broken JSON, wrong types, huge
bodies and slow clients each get a 4xx problem body, the server keeps serving, and a topic
holds exactly the events of the requests that were answered 202.

One real server (``create_app`` over an in-memory ``Mesh``, on 127.0.0.1 port 0) serves
every example of a test. Each example uses a topic of its own: it sends one hostile
request, then a well-formed publish that must still get 202, then reads the topic back
from the earliest event and compares ids.
"""

from __future__ import annotations

import gzip
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import anyio
import anyio.abc
import msgspec
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventmesh import Event, Mesh
from eventmesh.bindings.http import to_batch, to_binary, to_structured
from eventmesh.config import HttpListener
from eventmesh.event import encode_json
from eventmesh.server.http import create_app
from eventmesh.server.subscriptions import Registry
from eventmesh.testing.strategies import extension_names, json_scalars, json_values

pytestmark = pytest.mark.anyio

MAX_EVENT: Final = 4096
MAX_REQUEST: Final = 16384
LISTENER: Final = HttpListener(
    host="127.0.0.1", port=0, max_event_size=MAX_EVENT, max_request_size=MAX_REQUEST
)
FUZZ: Final = settings(
    max_examples=40,
    deadline=None,
    # One server serves every example: that it keeps serving is what is tested.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
REQUIRED: Final = ("specversion", "id", "source", "type")
STRUCTURED: Final = {"Content-Type": "application/cloudevents+json"}
BATCH: Final = {"Content-Type": "application/cloudevents-batch+json"}
PUBLISH_PATHS: Final = ("/topics/{}/events", "/eventmesh/publish/{}")


# -- the server and its client -----------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, read whole."""

    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class Ingress:
    """The running HTTP API, a client session, and the mesh behind them."""

    mesh: Mesh
    host: str
    port: int
    session: aiohttp.ClientSession

    async def post(
        self, topic: str, headers: Mapping[str, str], body: Any, *, path: str = PUBLISH_PATHS[0]
    ) -> Answer:
        """POST exactly these headers (no Content-Type of aiohttp's own) and body; a
        dropped connection fails the test."""
        url = f"http://{self.host}:{self.port}{path.format(topic)}"
        with anyio.fail_after(10):
            async with self.session.post(
                url, headers=dict(headers), data=body, skip_auto_headers=("Content-Type",)
            ) as response:
                return Answer(response.status, response.content_type, await response.read())


@pytest.fixture
async def ingress() -> AsyncIterator[Ingress]:
    """The HTTP API on a free port with small size limits, over an in-memory mesh."""
    async with Mesh() as mesh, Registry(mesh) as registry:
        runner = web.AppRunner(create_app(mesh, registry, LISTENER), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, LISTENER.host, 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                yield Ingress(mesh, host, port, session)
        finally:
            await runner.cleanup()


def new_topic() -> str:
    return f"fuzz-{uuid.uuid4().hex}"


def good_event(n: int = 0) -> Event:
    return Event(type="com.example.fuzz", source="/fuzz", subject=str(n), data={"n": n})


def good_object(n: int = 0) -> dict[str, Any]:
    """A valid event in the JSON format, as a dict to break."""
    return good_event(n).to_dict()


def problem_of(answer: Answer, status: int | None = None) -> dict[str, Any]:
    """The problem body of a 4xx answer; fails on anything else."""
    assert 400 <= answer.status < 500, answer
    if status is not None:
        assert answer.status == status, answer
    assert answer.content_type == "application/problem+json", answer
    body = msgspec.json.decode(answer.body)
    assert isinstance(body, dict), answer
    assert isinstance(body.get("type"), str), body
    assert isinstance(body.get("detail"), str), body
    assert body.get("status") == answer.status, body
    return body


async def stored(mesh: Mesh, topic: str) -> list[Event]:
    """Every event the topic holds, read from the earliest by a new consumer group."""
    consumer = mesh.connector(topic).subscribe(topic, f"check-{uuid.uuid4().hex}", start="earliest")
    async with consumer:
        deliveries = await consumer.fetch(100_000, timeout=0)
    return [delivery.event for delivery in deliveries]


def assert_deliverable(event: Event) -> None:
    """An accepted event can be sent on in every HTTP content mode."""
    encode_json(event)
    to_structured(event)
    to_binary(event)


async def publish_good(ingress: Ingress, topic: str) -> str:
    """A well-formed binary publish, which must still be stored; its event's id."""
    event = good_event()
    headers, body = to_binary(event)
    answer = await ingress.post(topic, headers, body)
    assert answer.status == 202, answer
    assert msgspec.json.decode(answer.body) == {"stored": 1, "ids": [event.id]}
    return event.id


async def only_good_stored(ingress: Ingress, topic: str) -> None:
    """A good publish to ``topic`` still gets 202, and it is all the topic holds."""
    good = await publish_good(ingress, topic)
    assert [event.id for event in await stored(ingress.mesh, topic)] == [good]


def raw_headers(event: Event) -> dict[str, bytes]:
    """The binary-mode headers of ``event``, as bytes for a raw socket."""
    return {name: value.encode() for name, value in to_binary(event)[0].items()}


async def refused(
    ingress: Ingress,
    headers: Mapping[str, str],
    body: Any,
    *,
    status: int | None = None,
    path: str = PUBLISH_PATHS[0],
) -> dict[str, Any]:
    """Send a hostile request and check it is refused with a 4xx problem, the server
    still stores a good publish, and the topic holds that one event only."""
    topic = new_topic()
    problem = problem_of(await ingress.post(topic, headers, body, path=path), status)
    await only_good_stored(ingress, topic)
    return problem


async def answered(ingress: Ingress, answer: Answer, topic: str) -> None:
    """For a request of unknown validity: a 202 or a 4xx problem, never anything else;
    afterwards the topic holds exactly what the 202 said, every event deliverable."""
    expected: list[str] = []
    if answer.status == 202:
        expected = msgspec.json.decode(answer.body)["ids"]
    else:
        problem_of(answer)
    expected.append(await publish_good(ingress, topic))
    events = await stored(ingress.mesh, topic)
    assert sorted(event.id for event in events) == sorted(expected)
    for event in events:
        assert_deliverable(event)


# -- strategies --------------------------------------------------------------------------------

# Header text the client can send: no control characters (the HTTP client refuses them).
header_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)
# Percent-encoding, quotes and non-ASCII mixed in on purpose.
header_junk = st.lists(
    st.one_of(
        header_text,
        st.sampled_from(['"', "%", "%2", "%ZZ", "%C0%A0", "%FF", "%E2%82", "%00", "\\", '\\"']),
        st.binary(min_size=1, max_size=4).map(lambda b: "".join(f"%{x:02X}" for x in b)),
    ),
    max_size=5,
).map("".join)
# Header-name characters (RFC 9110 tchar) that a CloudEvents attribute name may not hold.
BAD_NAME_CHARS: Final = "!#$&'*+-.^_`|~"
tchar = st.sampled_from(sorted(set("abcdefghijklmnopqrstuvwxyz0123456789" + BAD_NAME_CHARS)))
bad_extension_name = st.one_of(
    st.sampled_from(["", "data", "data_base64", "extensions"]),
    st.tuples(
        st.text(tchar, max_size=6), st.sampled_from(BAD_NAME_CHARS), st.text(tchar, max_size=6)
    ).map("".join),
)
# Not RFC 3339: no digits at all, or well-known near misses.
bad_time_text = st.one_of(
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Nd")), max_size=30),
    st.sampled_from(
        [
            "2024-13-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-01-01T25:00:00Z",
            "2024-01-01T00:61:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01",
            "12:00:00Z",
            "2024-01-01T00:00:00Zjunk",
            "yesterday",
            "0",
        ]
    ),
)
not_json_object = json_values().filter(lambda v: not isinstance(v, dict))


def _not_nonempty_str(value: Any) -> bool:
    return not (isinstance(value, str) and value)


@st.composite
def wrongly_typed(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A JSON-format event with one attribute of a wrong type or value, and its name."""
    obj = good_object(draw(st.integers(0, 1000)))
    kind = draw(
        st.sampled_from(
            ["required", "specversion", "time", "optional", "extension", "base64", "both"]
        )
    )
    if kind == "required":
        name = draw(st.sampled_from(["id", "source", "type"]))
        obj[name] = draw(json_values().filter(_not_nonempty_str))
    elif kind == "specversion":
        name = "specversion"
        obj[name] = draw(json_values().filter(lambda v: v != "1.0"))
    elif kind == "time":
        name = "time"
        obj[name] = draw(
            st.one_of(
                bad_time_text,
                json_values().filter(lambda v: v is not None and not isinstance(v, str)),
            )
        )
    elif kind == "optional":
        name = draw(st.sampled_from(["datacontenttype", "dataschema", "subject"]))
        obj[name] = draw(json_values().filter(lambda v: v is not None and _not_nonempty_str(v)))
    elif kind == "extension":
        name = draw(extension_names())
        obj[name] = draw(
            st.one_of(
                st.floats(allow_nan=False, allow_infinity=False),
                st.lists(json_scalars(), max_size=2),
                st.dictionaries(st.text(max_size=3), json_scalars(), max_size=2),
                st.integers(2**31, 2**62),
                st.integers(-(2**62), -(2**31) - 1),
            )
        )
    elif kind == "base64":
        name = "data_base64"
        obj.pop("data", None)
        obj[name] = draw(
            st.one_of(
                json_values().filter(lambda v: v is not None and not isinstance(v, str)),
                st.sampled_from(["!!!", "abc", "a===", "====", "ab\ncd", "€"]),
            )
        )
    else:
        name = "data"
        obj["data_base64"] = "AAAA"
    return obj, name


bad_object = st.one_of(wrongly_typed().map(lambda pair: pair[0]), not_json_object)
too_big_object = st.integers(MAX_EVENT, MAX_REQUEST // 2).map(
    lambda size: {**good_object(99), "data": "x" * size}
)


@st.composite
def batch_with_one(
    draw: st.DrawFn, odd_one: st.SearchStrategy[Any], most: int
) -> tuple[list[Any], int]:
    """Up to ``most`` good events in the JSON format with ``odd_one`` among them, and
    its index. (Drawn here, not in the test: an async test must not draw interactively,
    or a shrink's StopTest kills the anyio runner.)"""
    items: list[Any] = [good_object(n) for n in range(draw(st.integers(0, most)))]
    index = draw(st.integers(0, len(items)))
    items.insert(index, draw(odd_one))
    return items, index


# -- headers -----------------------------------------------------------------------------------


@FUZZ
@given(missing=st.sampled_from(REQUIRED), path=st.sampled_from(PUBLISH_PATHS))
async def test_binary_event_without_a_required_attribute_is_400(
    ingress: Ingress, missing: str, path: str
) -> None:
    """A binary event missing ce-specversion, ce-id, ce-source or ce-type is a 400
    naming that attribute."""
    headers, body = to_binary(good_event())
    del headers[f"ce-{missing}"]
    problem = await refused(ingress, headers, body, status=400, path=path)
    assert problem["attribute"] == missing


@FUZZ
@given(
    bad=st.one_of(
        # No "1" in it, so it cannot decode to 1.0 whatever the quoting or escapes.
        st.tuples(st.just("specversion"), header_text.filter(lambda v: "1" not in v)),
        st.tuples(st.just("time"), bad_time_text),
    )
)
async def test_binary_event_with_a_bad_specversion_or_time_is_400(
    ingress: Ingress, bad: tuple[str, str]
) -> None:
    """A ce-specversion other than 1.0, or a ce-time that is not RFC 3339, is a 400
    naming the attribute."""
    name, value = bad
    headers, body = to_binary(good_event())
    headers[f"ce-{name}"] = value
    problem = await refused(ingress, headers, body, status=400)
    assert problem["attribute"] == name


@FUZZ
@given(name=bad_extension_name, value=header_text)
async def test_binary_event_with_a_bad_extension_name_is_400(
    ingress: Ingress, name: str, value: str
) -> None:
    """A ce- header whose name is not a CloudEvents attribute name is a 400."""
    headers, body = to_binary(good_event())
    headers[f"ce-{name}"] = value
    await refused(ingress, headers, body, status=400)


@FUZZ
@given(
    junk=st.dictionaries(
        st.sampled_from(["id", "source", "type", "subject", "dataschema", "partitionkey", "x1"]),
        header_junk,
        min_size=1,
    ),
    content_type=st.one_of(
        st.none(), header_text, st.sampled_from(["application/json; charset=%FF", "text/é"])
    ),
)
async def test_junk_header_values_are_accepted_or_refused_never_half_stored(
    ingress: Ingress, junk: dict[str, str], content_type: str | None
) -> None:
    """ce- values full of percent signs, quotes and non-ASCII are either stored as
    events that can be sent on again, or refused with a 4xx problem."""
    headers, body = to_binary(good_event())
    headers.pop("content-type", None)
    for name, value in junk.items():
        headers[f"ce-{name}"] = value
    if content_type is not None:
        headers["content-type"] = content_type
    topic = new_topic()
    await answered(ingress, await ingress.post(topic, headers, body), topic)


async def raw_request(ingress: Ingress, head: bytes, body: bytes = b"") -> Answer:
    """Send bytes the HTTP client would refuse to; the answer, read off the socket."""
    with anyio.fail_after(10):
        stream = await anyio.connect_tcp(ingress.host, ingress.port)
        async with stream:
            await stream.send(head + b"\r\n" + body)
            return await read_answer(stream)


async def read_answer(stream: anyio.abc.ByteStream) -> Answer:
    """One HTTP/1.1 response (after any 1xx) with a Content-Length body."""
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive()
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status >= 200:
            break
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(buffer) < length:
        buffer += await stream.receive()
    content_type = headers.get("content-type", "").split(";")[0].strip()
    return Answer(status, content_type, buffer[:length])


def head_of(topic: str, headers: Mapping[str, bytes], length: int) -> bytes:
    """The request line and headers of a publish, for a raw socket."""
    lines = [f"POST /topics/{topic}/events HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    lines += [f"Content-Length: {length}".encode(), b"Connection: close", b""]
    return b"\r\n".join(lines)


@FUZZ
@given(
    name=st.sampled_from(["ce-id", "ce-source", "ce-type", "ce-subject", "ce-x1", "content-type"]),
    value=st.lists(st.integers(0x20, 0x7E) | st.integers(0x80, 0xFF), max_size=16).map(bytes),
    high=st.binary(min_size=1, max_size=4).map(lambda b: bytes(0x80 | x for x in b)),
)
async def test_raw_non_utf8_header_bytes_are_never_stored_undeliverable(
    ingress: Ingress, name: str, value: bytes, high: bytes
) -> None:
    """A ce- or Content-Type header carrying raw bytes above 0x7F (often not UTF-8) is
    refused with a 4xx problem, or stored as an event that can be sent on again."""
    event = good_event()
    headers = raw_headers(event)
    headers[name] = b"a" + value + high
    body = msgspec.json.encode(event.data)
    topic = new_topic()
    answer = await raw_request(ingress, head_of(topic, headers, len(body)), body)
    await answered(ingress, answer, topic)


# -- structured bodies -------------------------------------------------------------------------


@FUZZ
@given(cut=st.integers(0, 10_000), path=st.sampled_from(PUBLISH_PATHS))
async def test_truncated_structured_json_is_400(ingress: Ingress, cut: int, path: str) -> None:
    """A structured event cut anywhere short of its end is not JSON: a 400."""
    _, body = to_structured(good_event())
    cut %= len(body)
    await refused(ingress, STRUCTURED, body[:cut], status=400, path=path)


@FUZZ
@given(body=st.binary(max_size=300))
async def test_random_bytes_as_a_structured_event_are_400(ingress: Ingress, body: bytes) -> None:
    """Random bytes marked application/cloudevents+json are a 400, never a 500."""
    await refused(ingress, STRUCTURED, body, status=400)


@FUZZ
@given(value=not_json_object, mode=st.sampled_from(["structured", "batch"]))
async def test_json_that_is_not_an_event_object_is_400(
    ingress: Ingress, value: Any, mode: str
) -> None:
    """Structured JSON that is an array, null, a number or a string, or a batch that is
    not an array of objects, is a 400."""
    if mode == "batch" and isinstance(value, list):
        value = [value]  # an array, but of something other than objects
    headers = STRUCTURED if mode == "structured" else BATCH
    await refused(ingress, headers, msgspec.json.encode(value), status=400)


@FUZZ
@given(broken=wrongly_typed(), path=st.sampled_from(PUBLISH_PATHS))
async def test_structured_event_with_a_wrongly_typed_attribute_is_400(
    ingress: Ingress, broken: tuple[dict[str, Any], str], path: str
) -> None:
    """An attribute of the wrong JSON type or an invalid value is a 400 naming it."""
    obj, name = broken
    problem = await refused(ingress, STRUCTURED, msgspec.json.encode(obj), status=400, path=path)
    assert problem.get("attribute") == name


# -- batches -----------------------------------------------------------------------------------


@FUZZ
@given(batch=batch_with_one(bad_object, most=6))
async def test_batch_with_one_bad_event_stores_none_of_it(
    ingress: Ingress, batch: tuple[list[Any], int]
) -> None:
    """One bad event among good ones refuses the whole batch with a 400 whose index
    names it; none of the good ones is stored."""
    items, index = batch
    problem = await refused(ingress, BATCH, msgspec.json.encode(items), status=400)
    assert problem["index"] == index


@FUZZ
@given(batch=batch_with_one(too_big_object, most=3))
async def test_batch_with_one_event_above_the_event_limit_stores_none_of_it(
    ingress: Ingress, batch: tuple[list[Any], int]
) -> None:
    """A batch under the request limit holding one event above the event limit is a
    413 naming that event; none of the batch is stored."""
    items, index = batch
    problem = await refused(ingress, BATCH, msgspec.json.encode(items), status=413)
    assert problem["index"] == index


# -- content types -----------------------------------------------------------------------------


@FUZZ
@given(
    content_type=st.one_of(
        st.sampled_from(["APPLICATION/CLOUDEVENTS+XML; charset=utf-8", "application/cloudevents"]),
        st.from_regex(r"application/cloudevents[a-z+\-]{1,12}", fullmatch=True).filter(
            lambda t: t not in (STRUCTURED["Content-Type"], BATCH["Content-Type"])
        ),
    ),
    binary=st.booleans(),
)
async def test_other_cloudevents_formats_are_415(
    ingress: Ingress, content_type: str, binary: bool
) -> None:
    """A CloudEvents event format other than JSON is a 415, even with ce- headers."""
    headers, body = to_structured(good_event())
    if binary:
        headers = to_binary(good_event())[0]
    headers = {**headers, "content-type": content_type}
    await refused(ingress, headers, body, status=415)


@FUZZ
@given(
    content_type=st.one_of(
        st.none(),
        st.sampled_from(
            [
                "application/json",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/octet-stream",
                "application/cloudevent+json",
            ]
        ),
    ),
    body=st.sampled_from([b"", b"{}", to_structured(good_event())[1], b"\x00\xff"]),
)
async def test_no_ce_headers_and_no_event_format_is_415(
    ingress: Ingress, content_type: str | None, body: bytes
) -> None:
    """A request that is neither binary (no ce- headers) nor an event format is a 415."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    await refused(ingress, headers, body, status=415)


# -- sizes -------------------------------------------------------------------------------------


@FUZZ
@given(
    size=st.integers(MAX_EVENT + 1, MAX_REQUEST - 512),
    mode=st.sampled_from(["binary", "structured"]),
)
async def test_event_above_the_event_limit_is_413(ingress: Ingress, size: int, mode: str) -> None:
    """One event above max_event_size, in a request under max_request_size, is a 413."""
    event = good_event().replace(data="x" * size)
    headers, body = to_binary(event) if mode == "binary" else to_structured(event)
    await refused(ingress, headers, body, status=413)


@FUZZ
@given(
    size=st.integers(MAX_REQUEST + 1, 8 * MAX_REQUEST),
    mode=st.sampled_from(["binary", "structured", "batch"]),
    chunked=st.booleans(),
)
async def test_request_above_the_request_limit_is_413(
    ingress: Ingress, size: int, mode: str, chunked: bool
) -> None:
    """A body above max_request_size is a 413, with a Content-Length or chunked."""
    if mode == "batch":
        small = [good_event(n) for n in range(size // 100 + 1)]
        headers, body = to_batch(small)
    else:
        event = good_event().replace(data="x" * size)
        headers, body = to_binary(event) if mode == "binary" else to_structured(event)
    assert len(body) > MAX_REQUEST

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    await refused(ingress, headers, pieces() if chunked else body, status=413)


async def test_compressed_body_that_inflates_above_the_limit_is_413(ingress: Ingress) -> None:
    """A small gzip body that inflates past max_request_size is a 413 (no zip bomb)."""
    headers, body = to_structured(good_event().replace(data="0" * (100 * MAX_REQUEST)))
    packed = gzip.compress(body)
    assert len(packed) < MAX_REQUEST
    await refused(ingress, {**headers, "Content-Encoding": "gzip"}, packed, status=413)


async def test_declared_huge_body_is_refused_before_it_is_sent(ingress: Ingress) -> None:
    """A Content-Length of 1 GB is answered 413 while the client has sent only 1 KB."""
    headers = raw_headers(good_event())
    topic = new_topic()
    answer = await raw_request(ingress, head_of(topic, headers, 1 << 30), b"x" * 1024)
    problem_of(answer, 413)
    await only_good_stored(ingress, topic)


NOT_UTF8: Final = b'"\xff\xc0\xa0"'
DEEP: Final = b"[" * 1500 + b"]" * 1500


async def test_expect_continue_with_a_huge_length_ends_in_413(ingress: Ingress) -> None:
    """Expect: 100-continue with a Content-Length of 1 GB gets a final 413 problem
    without the client sending any of the body."""
    headers = raw_headers(good_event())
    headers["Expect"] = b"100-continue"
    topic = new_topic()
    answer = await raw_request(ingress, head_of(topic, headers, 1 << 30))
    problem_of(answer, 413)
    await only_good_stored(ingress, topic)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param(
            STRUCTURED,
            b'{"specversion":"1.0","id":' + NOT_UTF8 + b',"source":"/s","type":"t"}',
            id="structured-not-utf8",
        ),
        pytest.param(
            BATCH,
            b'[{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + NOT_UTF8 + b"}]",
            id="batch-not-utf8",
        ),
        pytest.param(
            STRUCTURED,
            b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + DEEP + b"}",
            id="structured-deeply-nested",
        ),
        pytest.param(BATCH, b"[" + DEEP + b"]", id="batch-deeply-nested"),
    ],
)
async def test_event_formats_json_decoders_choke_on_are_400_not_500(
    ingress: Ingress, headers: dict[str, str], body: bytes
) -> None:
    """Structured or batch bodies that are not UTF-8, or nest deeper than the JSON
    decoder goes, are the client's fault: a 400 problem, never a 500."""
    await refused(ingress, headers, body, status=400)


@pytest.mark.parametrize("content_type", [None, "application/json", "text/json"])
@pytest.mark.parametrize("body", [NOT_UTF8, DEEP], ids=["not-utf8", "deeply-nested"])
async def test_binary_data_json_decoders_choke_on_is_stored_or_400_never_500(
    ingress: Ingress, content_type: str | None, body: bytes
) -> None:
    """Binary-mode data under a JSON content type that is not UTF-8, or nests deeper than
    the decoder goes, is stored as it came (the binding keeps undecodable data as bytes)
    or refused with a 4xx problem; never a 500."""
    headers = to_binary(good_event())[0]
    if content_type is not None:
        headers["content-type"] = content_type
    topic = new_topic()
    await answered(ingress, await ingress.post(topic, headers, body), topic)


# -- slow clients ------------------------------------------------------------------------------


async def test_slow_and_vanishing_clients_block_nothing_and_store_nothing(
    ingress: Ingress,
) -> None:
    """Clients that stop after the headers, mid-body or mid-headers, or trickle a body
    and vanish, neither hold up a normal client nor leave anything stored; a client that
    trickles a whole event slowly gets it stored."""
    topic = new_topic()
    structured = to_structured(good_event(1))[1]
    slow = good_event(2).replace(data="y" * 600)
    binary, binary_body = raw_headers(slow), to_binary(slow)[1]
    ct = {"content-type": b"application/cloudevents+json"}
    stalled = [
        head_of(topic, binary, len(binary_body)),  # headers, then nothing
        head_of(topic, ct, len(structured)) + b"\r\n" + structured[: len(structured) // 2],
        head_of(topic, binary, len(binary_body))[:40],  # half a request line and headers
        head_of(topic, binary, len(binary_body)) + b"\r\n" + binary_body[:-1],  # one byte short
    ]
    trickled = good_event(3)
    trickled_body = to_structured(trickled)[1]
    good_ids: list[str] = []
    with anyio.fail_after(30):
        streams = [await anyio.connect_tcp(ingress.host, ingress.port) for _ in stalled]
        for stream, data in zip(streams, stalled, strict=True):
            await stream.send(data)
        vanishing = await anyio.connect_tcp(ingress.host, ingress.port)
        honest = await anyio.connect_tcp(ingress.host, ingress.port)
        answers: list[Answer] = []

        async def trickle(stream: anyio.abc.ByteStream, body: bytes, stop: int) -> None:
            await stream.send(head_of(topic, ct, len(body)) + b"\r\n")
            for start in range(0, stop, 16):
                await stream.send(body[start : min(start + 16, stop)])
                await anyio.sleep(0.005)
            if stop == len(body):
                answers.append(await read_answer(stream))

        async with anyio.create_task_group() as tg:
            tg.start_soon(trickle, vanishing, binary_body, len(binary_body) - 1)
            tg.start_soon(trickle, honest, trickled_body, len(trickled_body))
            for _ in range(20):
                good_ids.append(await publish_good(ingress, topic))
        for stream in [*streams, vanishing, honest]:
            await stream.aclose()
        # The server sees the sockets close; give it the chance to (wrongly) store.
        for _ in range(20):
            await anyio.sleep(0.01)
        good_ids.append(await publish_good(ingress, topic))
    [answer] = answers
    assert answer.status == 202, answer
    assert msgspec.json.decode(answer.body)["ids"] == [trickled.id]
    ids = sorted(event.id for event in await stored(ingress.mesh, topic))
    assert ids == sorted([*good_ids, trickled.id])


async def test_a_client_that_vanishes_mid_body_is_not_logged_as_a_server_error(
    ingress: Ingress, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closes its connection in the middle of a body is its own
    business: no ERROR record (a traceback per vanished client floods the log)."""
    topic = new_topic()
    headers = raw_headers(good_event())
    with anyio.fail_after(10):
        for _ in range(3):
            stream = await anyio.connect_tcp(ingress.host, ingress.port)
            await stream.send(head_of(topic, headers, 1000) + b"\r\n" + b"{" * 10)
            await stream.aclose()
        # The server sees the sockets close; give it the chance to log.
        for _ in range(20):
            await anyio.sleep(0.01)
        good = await publish_good(ingress, topic)
    assert [event.id for event in await stored(ingress.mesh, topic)] == [good]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_many_stalled_connections_do_not_stop_the_server(ingress: Ingress) -> None:
    """Fifty connections that sent headers and stalled do not stop good publishes."""
    topic = new_topic()
    headers = raw_headers(good_event())
    with anyio.fail_after(30):
        streams = []
        for _ in range(50):
            stream = await anyio.connect_tcp(ingress.host, ingress.port)
            await stream.send(head_of(topic, headers, 10_000) + b"\r\n" + b"{" * 100)
            streams.append(stream)
        good = [await publish_good(ingress, topic) for _ in range(10)]
        for stream in streams:
            await stream.aclose()
        good.append(await publish_good(ingress, topic))
    assert sorted(event.id for event in await stored(ingress.mesh, topic)) == sorted(good)
