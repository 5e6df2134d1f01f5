"""The sidecar's servers against clients that are slow, greedy or send garbage: each
bound of docs/operations.md ("Limits: listeners and scrapes") holds, and the admin port
keeps answering."""

from __future__ import annotations

import gzip
import logging
import re
import resource
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import anyio.abc
import grpc
import grpc.aio
import msgspec
import pytest

from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._generated.eventmesh.v1.eventmesh_pb2_grpc import EventMeshStub
from eventmesh.config import load_config
from eventmesh.errors import ConfigError
from eventmesh.observability.metrics import MAX_LABEL_LENGTH
from eventmesh.server._ratelimit import LogLimit
from eventmesh.server.grpc import ERROR_METADATA_KEY, SERVICE_NAME
from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

BINARY = {
    "ce-specversion": "1.0",
    "ce-type": "t",
    "ce-source": "/s",
    "ce-id": "1",
    "Content-Type": "application/json",
}
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f"
"""Field 1, length-delimited, with a length far past the end: no message decodes it."""


def settings(**server: Any) -> dict[str, Any]:
    listeners: dict[str, Any] = {"http": {}, "grpc": {}, "admin": {}}
    for name, values in server.items():
        listeners[name] = values
    return {"server": {name: {"port": 0, **values} for name, values in listeners.items()}}


@asynccontextmanager
async def running(
    config: dict[str, Any] | None = None, **kwargs: Any
) -> AsyncIterator[tuple[Sidecar, aiohttp.ClientSession]]:
    async with Sidecar(config or settings(), **kwargs) as sidecar, aiohttp.ClientSession() as s:
        yield sidecar, s


async def connect(url: str) -> anyio.abc.SocketStream:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await anyio.connect_tcp(host, int(port))


async def read_to_close(stream: anyio.abc.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    got = b""
    try:
        while True:
            got += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return got


async def healthz(session: aiohttp.ClientSession, sidecar: Sidecar) -> int:
    with anyio.fail_after(1):
        async with session.get(sidecar.admin_url + "/healthz") as response:
            return response.status


# -- slow clients ----------------------------------------------------------------------------


async def test_a_request_line_never_finished_is_disconnected_after_header_timeout() -> None:
    """A client that sends half a request line and then nothing is disconnected once
    server.http.header_timeout has passed (aiohttp alone waits an hour)."""
    async with running(settings(http={"header_timeout": 0.5})) as (sidecar, _):
        stream = await connect(sidecar.http_url)
        await stream.send(b"GET /subscr")
        with anyio.fail_after(5):
            assert await read_to_close(stream) == b""


async def test_the_next_request_on_a_kept_alive_connection_has_the_same_deadline() -> None:
    """After one answered request, a second one whose headers stall is disconnected too."""
    async with running(settings(http={"header_timeout": 0.5})) as (sidecar, _):
        stream = await connect(sidecar.http_url)
        await stream.send(b"GET /subscriptions HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await stream.receive()
        assert first.startswith(b"HTTP/1.1 200")
        await stream.send(b"GET /subscriptions HTTP/1.1\r\nHo")
        with anyio.fail_after(5):
            rest = await read_to_close(stream)
        assert b"HTTP/1.1" not in rest  # no second answer: the connection was cut


async def test_a_pipelined_request_has_its_body_timeout_not_the_header_timeout() -> None:
    """A request pipelined behind another (its headers in before the first is answered)
    may take its body_timeout to send its body: before, its first body byte started the
    header clock again, and the connection was cut after header_timeout mid-upload."""
    config = settings(http={"header_timeout": 0.5, "body_timeout": 30})
    async with running(config) as (sidecar, _):
        stream = await connect(sidecar.http_url)
        body = b'{"topic": "orders", "id": "piped"}'
        await stream.send(
            b"GET /subscriptions HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /subscriptions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for i in range(0, len(body), 8):  # 5 pieces, 0.3 s apart: 1.2 s in all
            await anyio.sleep(0.3)
            await stream.send(body[i : i + 8])
        got = b""
        with anyio.fail_after(10):
            while got.count(b"HTTP/1.1 ") < 2:
                got += await stream.receive()
        await stream.aclose()
    assert re.findall(rb"HTTP/1\.1 \d+", got) == [b"HTTP/1.1 200", b"HTTP/1.1 201"]


async def test_a_body_that_stalls_is_answered_408_after_body_timeout() -> None:
    """Headers promising 100 bytes and 10 sent: 408 with a problem body naming the key,
    and the connection is closed."""
    async with running(settings(http={"body_timeout": 0.5})) as (sidecar, _):
        stream = await connect(sidecar.http_url)
        head = "".join(f"{k}: {v}\r\n" for k, v in BINARY.items())
        await stream.send(
            b"POST /topics/t/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            + head.encode()
            + b"\r\n0123456789"
        )
        with anyio.fail_after(5):
            answer = await read_to_close(stream)
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"server.http.body_timeout" in answer


async def test_connections_above_the_cap_are_refused_and_the_admin_port_answers() -> None:
    """With server.http.max_connections 4, four kept-alive clients hold the port: the
    next ones get a 503 and are closed at once, /healthz answers on the admin port all
    along, and a freed slot admits a new client."""
    config = settings(http={"max_connections": 4}, admin={"max_connections": 2})
    async with running(config) as (sidecar, session):
        held = []
        for _ in range(4):
            stream = await connect(sidecar.http_url)
            await stream.send(b"GET /subscriptions HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await stream.receive()).startswith(b"HTTP/1.1 200")
            held.append(stream)
        with anyio.fail_after(5):
            for _ in range(6):
                extra = await connect(sidecar.http_url)
                answer = await read_to_close(extra)
                assert answer.startswith(b"HTTP/1.1 503"), answer
                assert b"server.http.max_connections" in answer
                assert await healthz(session, sidecar) == 200
        await held.pop().aclose()
        with anyio.fail_after(5):
            while True:  # the server sees the close a moment later
                async with session.get(sidecar.http_url + "/subscriptions") as response:
                    if response.status == 200:
                        break
                await anyio.sleep(0.05)
        for stream in held:
            await stream.aclose()


async def test_the_admin_port_has_its_own_cap() -> None:
    """server.admin.max_connections bounds the admin port like the public ones."""
    async with running(settings(admin={"max_connections": 1})) as (sidecar, _):
        first = await connect(sidecar.admin_url)
        await first.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await first.receive()).startswith(b"HTTP/1.1 200")
        second = await connect(sidecar.admin_url)
        with anyio.fail_after(5):
            assert (await read_to_close(second)).startswith(b"HTTP/1.1 503")
        await first.aclose()


async def test_the_open_file_limit_is_raised_to_hold_every_cap() -> None:
    """A soft RLIMIT_NOFILE below what the caps need (HTTP 3,000 + gRPC 1,000 + admin
    100 + webhooks 100 + 256 spare) is raised when the hard limit allows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 3000 + 1000 + 100 + 100 + 256
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard open-file limit is {hard}, below {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        async with running(settings(http={"max_connections": 3000})):
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_listener_bounds_are_checked_at_load_time() -> None:
    """A cap below 1 or a zero timeout is a ConfigError naming the listener."""
    for server in (
        {"http": {"max_connections": 0}},
        {"admin": {"header_timeout": 0}},
        {"http": {"body_timeout": "0s"}},
        {"grpc": {"max_concurrent_rpcs": 0}},
    ):
        with pytest.raises(ConfigError) as caught:
            load_config({"server": server})
        assert caught.value.key == f"server.{next(iter(server))}"


# -- compressed bodies -----------------------------------------------------------------------


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, coding: str
) -> tuple[int, Any]:
    headers = {**BINARY, "Content-Encoding": coding}
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, msgspec.json.decode(await response.read())


async def test_malformed_gzip_and_deflate_bodies_are_400_with_a_problem_body() -> None:
    """Bytes that are not the Content-Encoding they claim, or a stream cut short, are a
    400 EventValidationError (not a 500); an unknown coding is a 415."""
    async with running() as (sidecar, session):
        url = sidecar.http_url + "/topics/t/events"
        truncated = gzip.compress(b'{"a": 1}')[:-6]
        for body, coding in (
            (b"not gzip at all", "gzip"),
            (truncated, "gzip"),
            (b"\x78\x9cgarbage", "deflate"),
        ):
            status, problem = await post(session, url, body, coding)
            assert (status, problem["type"]) == (400, "EventValidationError"), problem
            assert coding in problem["detail"]
        status, problem = await post(session, url, b"{}", "compress")
        assert (status, problem["type"]) == (415, "ContentTypeError")
        status, _ = await post(session, url, gzip.compress(b'{"a": 1}'), "gzip")
        assert status == 202


async def test_a_gzip_bomb_is_413_without_inflating_it() -> None:
    """200 KB of gzip that inflate to 200 MB, against max_request_size 1 MB: 413 naming
    the decompressed size, read to its end so the client gets the answer, nothing
    stored; a good compressed batch on the same session still works."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    bomb = b"".join(squeeze.compress(block) for _ in range(200)) + squeeze.flush()
    assert len(bomb) < 1_000_000
    config = settings(http={"max_request_size": 1_000_000})
    async with running(config) as (sidecar, session):
        url = sidecar.http_url + "/topics/bombed/events"
        with anyio.fail_after(10):
            status, problem = await post(session, url, bomb, "gzip")
        assert (status, problem["type"]) == (413, "EventTooLargeError")
        assert "decompressed" in problem["detail"]
        assert "bombed" not in sidecar.mesh.topics
        status, _ = await post(session, url.replace("bombed", "fine"), gzip.compress(b"1"), "gzip")
        assert status == 202


# -- gRPC ------------------------------------------------------------------------------------


async def test_undecodable_grpc_requests_are_invalid_argument() -> None:
    """Garbage bytes as the request of Publish, PublishBatch and Subscribe end the call
    with INVALID_ARGUMENT and eventmesh-error EventValidationError."""
    async with (
        running() as (sidecar, _),
        grpc.aio.insecure_channel(sidecar.grpc_target) as channel,
    ):
        for method in ("Publish", "PublishBatch"):
            call = channel.unary_unary(f"/{SERVICE_NAME}/{method}", None, None)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(GARBAGE, timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            trailing: Any = caught.value.trailing_metadata() or ()
            assert dict(trailing)[ERROR_METADATA_KEY] == "EventValidationError"
        stream = channel.stream_stream(f"/{SERVICE_NAME}/Subscribe", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream(iter([GARBAGE]), timeout=5):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_grpc_connections_above_the_cap_are_closed_and_silent_ones_time_out() -> None:
    """server.grpc.max_connections 2: two connections get the server's HTTP/2 settings,
    a third is closed at once; a connection that never sends its preface is closed once
    server.grpc.header_timeout has passed."""
    config = settings(grpc={"max_connections": 2, "header_timeout": 3})
    async with running(config) as (sidecar, _):
        url = "http://" + sidecar.grpc_target
        held = [await connect(url) for _ in range(2)]
        with anyio.fail_after(2):
            for stream in held:
                assert await stream.receive()  # the server's SETTINGS frame
            assert await read_to_close(await connect(url)) == b""
        with anyio.fail_after(10):
            for stream in held:
                assert b"handshake timeout" in await read_to_close(stream)


async def test_calls_above_max_concurrent_rpcs_are_resource_exhausted() -> None:
    """With server.grpc.max_concurrent_rpcs 2 and two Subscribe streams open, a Publish
    fails at once with RESOURCE_EXHAUSTED; once a stream ends, it succeeds."""
    async with (
        running(settings(grpc={"max_concurrent_rpcs": 2})) as (sidecar, _),
        grpc.aio.insecure_channel(sidecar.grpc_target) as channel,
    ):
        stub = EventMeshStub(channel)
        streams = []
        for i in range(2):
            call = stub.Subscribe()
            opening = pb.Open(topic="t", group=f"g{i}", credits=1, name=f"s{i}")
            await call.write(pb.SubscribeRequest(open=opening))
            with anyio.fail_after(5):
                assert (await call.read()).subscribed.name == f"s{i}"
            streams.append(call)
        event = pb.PublishRequest(topic="t")
        event.event.id, event.event.source, event.event.type = "1", "/s", "t"
        event.event.spec_version = "1.0"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Publish(event, timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await streams[0].done_writing()
        with anyio.fail_after(5):
            assert await streams[0].code() == grpc.StatusCode.OK
            while True:  # the server frees the slot a moment after the stream ends
                try:
                    assert (await stub.Publish(event, timeout=5)).stored == 1
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    await anyio.sleep(0.05)
        await streams[1].done_writing()


async def test_a_flood_of_bad_requests_is_a_few_warning_lines_without_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """100 undecodable gRPC calls and 100 bad gzip bodies: no ERROR, no traceback, and
    at most one WARNING per kind per second begun."""
    caplog.set_level(logging.DEBUG)
    async with running() as (sidecar, session):
        start = time.monotonic()
        async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
            call = channel.unary_unary(f"/{SERVICE_NAME}/Publish", None, None)
            for _ in range(100):
                with pytest.raises(grpc.aio.AioRpcError):
                    await call(GARBAGE, timeout=5)
        for _ in range(100):
            status, _ = await post(session, sidecar.http_url + "/topics/t/events", b"x", "gzip")
            assert status == 400
        seconds = time.monotonic() - start
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR]
    per_kind = 1 + int(seconds) + 1
    assert len(records) <= 2 * per_kind, [r.getMessage() for r in records]
    messages = " ".join(r.getMessage() for r in records)
    assert "not a valid eventmesh.v1.PublishRequest" in messages
    assert "not valid gzip" in messages


def test_the_log_limit_writes_one_line_per_kind_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Within the interval only the first line of a kind is written (other kinds keep
    their own turn); the next line written says how many were left out."""
    caplog.set_level(logging.WARNING)
    limit = LogLimit(logging.getLogger("test.limit"), interval=3600)
    for i in range(5):
        limit.warning("a", "bad thing %d", i)
    limit.warning("b", "other thing")
    limit.interval = 0
    limit.warning("a", "bad thing %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "bad thing 0",
        "other thing",
        "bad thing 5 (and 4 more like it not logged since the last line)",
    ]


# -- /metrics --------------------------------------------------------------------------------

_LABEL = re.compile(r'="([^"]*)"')


async def test_one_scrape_is_bounded_in_label_sets_and_label_length() -> None:
    """30 topics with 1,000-character names and max_label_sets 5: each label value is at
    most MAX_LABEL_LENGTH characters, and the published family has at most 5 label
    sets plus 'other'."""
    config = settings()
    config["metrics"] = {"max_label_sets": 5}
    config["limits"] = {"max_name_length": 2000}
    async with running(config) as (sidecar, session):
        for i in range(30):
            topic = f"{i:04d}" + "x" * 996
            async with session.post(
                f"{sidecar.http_url}/topics/{topic}/events", data=b"{}", headers=BINARY
            ) as response:
                assert response.status == 202
        async with session.get(sidecar.admin_url + "/metrics") as response:
            text = await response.text()
    published = [line for line in text.splitlines() if line.startswith("eventmesh_events_pub")]
    assert 2 <= len(published) <= 6
    assert max(len(value) for value in _LABEL.findall(text)) == MAX_LABEL_LENGTH
    assert any('topic="other"' in line for line in published)


async def test_a_flood_of_scrapes_renders_once_per_second() -> None:
    """50 scrapes in a row render the page at most once per second begun; the others
    are served the same text."""
    renders = 0

    def render() -> str:
        nonlocal renders
        renders += 1
        return f"# render {renders}\n"

    async with running(metrics=render) as (sidecar, session):
        start = time.monotonic()
        pages = set()
        for _ in range(50):
            async with session.get(sidecar.admin_url + "/metrics") as response:
                pages.add(await response.text())
        seconds = time.monotonic() - start
    assert 1 <= renders <= 1 + int(seconds) + 1
    assert len(pages) == renders
