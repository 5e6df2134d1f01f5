"""Request-reply: ``request()`` returns the first reply, embedded, over HTTP and gRPC, with
one behaviour: handlers and functions answer by returning an event, a timeout raises
RequestTimeoutError, late and duplicate replies are counted and dropped, and the pending
requests and the timeout are bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest

import eventmesh
from eventmesh import Event, Function, Mesh
from eventmesh._client import Client
from eventmesh._requests import CORRELATION_ID, INBOX_PREFIX, REPLY_TO
from eventmesh.config import HttpListener
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    LimitExceededError,
    RequestTimeoutError,
)

pytestmark = pytest.mark.anyio

DEADLINE = 20.0
"""Seconds a test waits for what must happen (generous: the machine is shared)."""


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after DEADLINE seconds."""
    with anyio.move_on_after(DEADLINE):
        while not condition():
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"{what} did not happen within {DEADLINE:g}s")


def calc(event: Event) -> Event:
    """A function with no reply_to: it answers requests only."""
    return Event(type="calc.result", source="/calc", data={"sum": sum(event.data["terms"])})


# -- one mesh, reached embedded, over HTTP or over gRPC -------------------------------------


@asynccontextmanager
async def _sidecar(mesh: Mesh, transport: str) -> AsyncIterator[Client]:
    if transport == "embedded":
        yield mesh
    elif transport == "http":
        from aiohttp import web

        from eventmesh.client.http import HttpClient
        from eventmesh.server.http import create_app
        from eventmesh.server.subscriptions import Registry

        async with Registry(mesh) as registry:
            runner = web.AppRunner(create_app(mesh, registry, HttpListener()))
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                host, port = runner.addresses[0][:2]
                async with HttpClient(f"http://{host}:{port}") as client:
                    yield client
            finally:
                await registry.close()
                await runner.cleanup()
    else:
        import grpc

        from eventmesh.client.grpc import GrpcClient
        from eventmesh.server.grpc import add_to_server

        server = grpc.aio.server()
        add_to_server(server, mesh)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with GrpcClient(f"127.0.0.1:{port}") as client:
                yield client
        finally:
            await server.stop(grace=None)


@pytest.fixture(params=["embedded", "grpc", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    """The transport under test."""
    name: str = request.param
    return name


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    """A new in-memory mesh with the ``calc`` function answering topic ``calc``."""
    config = {"limits": {"max_pending_requests": 3, "max_request_timeout": 60}}
    async with Mesh(config, functions=[Function.declare(calc, topic="calc")]) as opened:
        yield opened


@pytest.fixture
async def client(mesh: Mesh, transport: str) -> AsyncIterator[Client]:
    """A client of ``mesh`` over the transport under test."""
    async with _sidecar(mesh, transport) as connected:
        yield connected


async def echo(event: Event) -> Event:
    return Event(type="pong", source="/echo", data=event.data)


def ping(n: int = 1, **extensions: Any) -> Event:
    return Event(type="ping", source="/test", data={"n": n}, extensions=extensions)


# -- answered ---------------------------------------------------------------------------------


async def test_a_subscription_handler_answers_a_request(mesh: Mesh, client: Client) -> None:
    """A handler that returns an event answers: the reply carries the request's id as
    correlationid, no replyto, and the handler needed no reply_to."""
    async with mesh.subscribe("pings", "echo", handler=echo):
        request = ping(7)
        reply = await client.request("pings", request, timeout=DEADLINE)
    assert (reply.type, reply.data) == ("pong", {"n": 7})
    assert reply.extensions[CORRELATION_ID] == request.id
    assert REPLY_TO not in reply.extensions
    assert "partitionkey" not in reply.extensions  # the inbox's own key is taken off


async def test_a_function_answers_a_request(mesh: Mesh, client: Client) -> None:
    """A function without reply_to that returns an event answers the request (with its
    causationid set as for any function reply)."""
    request = Event(type="calc", source="/test", data={"terms": [1, 2, 3]})
    reply = await client.request("calc", request, timeout=DEADLINE)
    assert reply.data == {"sum": 6}
    assert reply.extensions[CORRELATION_ID] == request.id
    assert reply.extensions["causationid"] == request.id
    (runner,) = mesh.functions
    assert (runner.stats.replies, runner.stats.failures) == (1, 0)


async def test_a_client_side_handler_answers_a_request(client: Client) -> None:
    """A handler run by the client itself (remotely: in the SDK) answers through the
    same convention, so a service behind any transport can be the responder."""
    async with client.subscribe("pings", "echo", handler=echo):
        reply = await client.request("pings", ping(3), timeout=DEADLINE)
    assert reply.data == {"n": 3}


async def test_the_requests_own_correlationid_is_kept(mesh: Mesh, client: Client) -> None:
    """A request that sets correlationid is answered under it."""
    async with mesh.subscribe("pings", "echo", handler=echo):
        reply = await client.request("pings", ping(1, correlationid="order-42"), timeout=DEADLINE)
    assert reply.extensions[CORRELATION_ID] == "order-42"


async def test_concurrent_requests_each_get_their_own_reply(mesh: Mesh, client: Client) -> None:
    """Requests in flight together are each answered with the reply to them."""
    replies: dict[int, Any] = {}

    async def ask(n: int) -> None:
        replies[n] = (await client.request("pings", ping(n), timeout=DEADLINE)).data["n"]

    async with mesh.subscribe("pings", "echo", handler=echo, delivery={"concurrency": 8}):
        for start in range(0, 30, 3):  # max_pending_requests is 3 in this mesh
            async with anyio.create_task_group() as tg:
                for n in range(start, start + 3):
                    tg.start_soon(ask, n)
    assert replies == {n: n for n in range(30)}


async def test_a_configured_reply_to_still_gets_the_reply(mesh: Mesh, client: Client) -> None:
    """A handler with reply_to answers the request and publishes to reply_to as before."""
    async with (
        mesh.subscribe("pings", "echo", handler=echo, reply_to="pongs"),
        mesh.subscribe("pongs", "audit", start="earliest") as audit,
    ):
        reply = await client.request("pings", ping(5), timeout=DEADLINE)
        async for delivery in audit:
            await delivery.ack()
            break
    assert delivery.event.id == reply.id


async def test_a_traced_request_is_answered_under_its_delivery_span() -> None:
    """With tracing on, a request is answered, and the reply is published inside the
    handler's delivery span (a child of the request's trace)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    async with (
        Mesh(span_processor=SimpleSpanProcessor(exporter)) as mesh,
        mesh.subscribe("pings", "echo", handler=echo),
    ):
        reply = await mesh.request("pings", ping(2), timeout=DEADLINE)
    assert reply.data == {"n": 2}
    trace_id = int(reply.extensions["traceparent"].split("-")[1], 16)
    spans = exporter.get_finished_spans()
    names = {s.name for s in spans if s.context is not None and s.context.trace_id == trace_id}
    assert "deliver pings/echo" in names
    assert any(name.startswith("publish") and INBOX_PREFIX in name for name in names)


def test_the_blocking_facade_requests() -> None:
    """connect_blocking().request waits for the reply without async code."""
    with eventmesh.connect_blocking() as mesh, mesh.subscribe("pings", "echo", handler=echo):
        reply = mesh.request("pings", ping(6), timeout=DEADLINE)
    assert reply.data == {"n": 6}


# -- not answered -----------------------------------------------------------------------------


async def test_no_reply_raises_request_timeout_error(mesh: Mesh, client: Client) -> None:
    """No responder: RequestTimeoutError (504 / DEADLINE_EXCEEDED on the wire), naming
    the topic, and counted as timed out."""
    with pytest.raises(RequestTimeoutError, match="on topic 'nobody'"):
        await client.request("nobody", ping(), timeout=0.2)
    assert mesh._request_counts()["timed_out"] == 1
    assert mesh._request_counts()["pending"] == 0


async def test_a_late_reply_is_counted_and_dropped() -> None:
    """A reply after the timeout is dropped and counted as late (in the metrics too)."""
    release = anyio.Event()
    answered = anyio.Event()

    async def slow(event: Event) -> Event:
        await release.wait()
        answered.set()
        return Event(type="pong", source="/slow")

    async with Mesh() as mesh, mesh.subscribe("pings", "slow", handler=slow):
        with pytest.raises(RequestTimeoutError):
            await mesh.request("pings", ping(), timeout=0.1)
        release.set()
        await answered.wait()
        await eventually(lambda: mesh._request_counts()["late"] == 1, "a late reply counted")
        counts = mesh._request_counts()
        assert (counts["answered"], counts["timed_out"], counts["pending"]) == (0, 1, 0)
        assert mesh.metrics is not None
        text = mesh.metrics.render()
        assert 'eventmesh_requests_total{outcome="late"} 1.0' in text
        assert 'eventmesh_requests_total{outcome="timed_out"} 1.0' in text


async def test_a_second_reply_is_counted_and_dropped() -> None:
    """A handler returning two replies answers with the first; the second is late."""

    async def twice(event: Event) -> list[Event]:
        return [Event(type="first", source="/t"), Event(type="second", source="/t")]

    async with Mesh() as mesh, mesh.subscribe("pings", "twice", handler=twice):
        reply = await mesh.request("pings", ping(), timeout=DEADLINE)
        await eventually(lambda: mesh._request_counts()["late"] == 1, "the duplicate counted")
    assert reply.type == "first"


async def test_a_replyto_that_is_no_inbox_is_ignored() -> None:
    """An event cannot steer a handler's reply into an ordinary topic with replyto."""

    async with Mesh() as mesh, mesh.subscribe("pings", "echo", handler=echo) as sub:
        await mesh.publish("pings", ping(replyto="payments"))
        await eventually(lambda: sub.stats.delivered == 1, "the event handled")
        assert mesh.metrics is not None
        assert "payments" not in mesh.metrics.published


async def test_closing_the_mesh_ends_a_waiting_request() -> None:
    """A request still waiting when the mesh closes raises ClosedError."""
    outcome: list[BaseException] = []

    async def ask(mesh: Mesh) -> None:
        try:
            await mesh.request("nobody", ping(), timeout=DEADLINE)
        except ClosedError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg, Mesh() as mesh:
        tg.start_soon(ask, mesh)
        await eventually(lambda: mesh._request_counts().get("pending") == 1, "waiting")
        # The mesh is closed here; the request ends without waiting out its timeout.
    assert len(outcome) == 1


# -- bounded ----------------------------------------------------------------------------------


async def test_pending_requests_are_capped(mesh: Mesh, client: Client) -> None:
    """One request beyond limits.max_pending_requests raises LimitExceededError (429 /
    RESOURCE_EXHAUSTED) naming the key; the others keep waiting."""
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(_wait_for_nothing, client)
        await eventually(lambda: mesh._request_counts().get("pending") == 3, "3 waiting")
        with pytest.raises(LimitExceededError, match=r"limits\.max_pending_requests"):
            await client.request("nobody", ping(), timeout=DEADLINE)
        tg.cancel_scope.cancel()


async def _wait_for_nothing(client: Client) -> None:
    await client.request("nobody", ping(), timeout=DEADLINE)


@pytest.mark.parametrize("timeout", [61, 0, -1])
async def test_the_timeout_is_bounded(client: Client, timeout: float) -> None:
    """A timeout above limits.max_request_timeout (60 here), or not above 0, is refused."""
    with pytest.raises(ConfigError, match="timeout"):
        await client.request("pings", ping(), timeout=timeout)


async def test_one_inbox_subscription_serves_every_request(mesh: Mesh) -> None:
    """The mesh opens one reply inbox for all its requests, not one per request."""
    async with mesh.subscribe("pings", "echo", handler=echo):
        for n in range(3):
            await mesh.request("pings", ping(n), timeout=DEADLINE)
    inboxes = [s for s in mesh.subscriptions if s.topic.startswith(INBOX_PREFIX)]
    assert len(inboxes) == 1


# -- the sidecar's HTTP form ------------------------------------------------------------------


async def typed_echo(event: Event) -> Event:
    return Event(type="pong", source="/echo", data=event.data, datacontenttype="application/json")


async def test_http_binary_request_is_answered_in_binary_mode(mesh: Mesh) -> None:
    """POST /request/{topic} in binary mode answers 200 with the reply in binary mode;
    a reply without datacontenttype comes structured (no Content-Type to make up)."""
    import aiohttp

    async with (
        mesh.subscribe("pings", "echo", handler=typed_echo),
        mesh.subscribe("plain", "echo", handler=echo),
        _http_url(mesh) as url,
    ):
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "req-1",
            "ce-source": "/curl",
            "ce-type": "ping",
            "content-type": "application/json",
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/request/pings?timeout=20", data=b'{"n": 9}', headers=headers
            ) as response,
        ):
            body = await response.read()
            assert response.status == 200
            assert response.headers["ce-type"] == "pong"
            assert response.headers["ce-correlationid"] == "req-1"
            assert response.headers["content-type"] == "application/json"
            assert msgspec.json.decode(body) == {"n": 9}
            headers["ce-id"] = "req-2"
            async with session.post(
                f"{url}/request/plain", data=b'{"n": 8}', headers=headers
            ) as plain:
                assert plain.status == 200
                assert plain.headers["content-type"] == "application/cloudevents+json"
                reply = eventmesh.event.decode_json(await plain.read())
            assert (reply.data, reply.datacontenttype) == ({"n": 8}, None)
            assert reply.extensions[CORRELATION_ID] == "req-2"


async def test_http_timeout_is_a_504_problem(mesh: Mesh) -> None:
    """No reply in time answers 504 with a RequestTimeoutError problem body."""
    import aiohttp

    event = eventmesh.event.encode_json(ping())
    async with (
        _http_url(mesh) as url,
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/request/nobody?timeout=0.1",
            data=event,
            headers={"content-type": "application/cloudevents+json"},
        ) as response,
    ):
        problem = await response.json(content_type=None)
    assert response.status == 504
    assert problem["type"] == "RequestTimeoutError"


@asynccontextmanager
async def _http_url(mesh: Mesh) -> AsyncIterator[str]:
    from aiohttp import web

    from eventmesh.server.http import create_app
    from eventmesh.server.subscriptions import Registry

    async with Registry(mesh) as registry:
        runner = web.AppRunner(create_app(mesh, registry, HttpListener()))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            yield f"http://{host}:{port}"
        finally:
            await registry.close()
            await runner.cleanup()


async def test_an_http_request_whose_client_hangs_up_stops_waiting(mesh: Mesh) -> None:
    """A client that leaves a POST /request frees its place under max_pending_requests."""
    import aiohttp

    event = eventmesh.event.encode_json(ping())
    async with _http_url(mesh) as url, aiohttp.ClientSession() as session:
        with anyio.move_on_after(0.1):  # the client gives up long before the timeout
            await session.post(
                f"{url}/request/nobody?timeout=50",
                data=event,
                headers={"content-type": "application/cloudevents+json"},
            )
        await eventually(lambda: mesh._request_counts().get("pending") == 0, "slot freed")


# -- other responders -------------------------------------------------------------------------


async def test_a_webhook_that_returns_an_event_answers_a_request(mesh: Mesh) -> None:
    """A webhook sink whose HTTP answer is a CloudEvent answers the request."""
    from eventmesh.delivery.webhook import WebhookSink
    from eventmesh.testing.tracing import ReplyingWebhook

    async with ReplyingWebhook() as hook:
        await mesh.webhooks.check_url(hook.url)
        sink = WebhookSink(hook.url, session=mesh.webhooks)
        async with mesh.subscribe("pings", "hook", handler=sink):
            request = ping()
            reply = await mesh.request("pings", request, timeout=DEADLINE)
    assert reply.type == "ping.reply"
    assert reply.extensions[CORRELATION_ID] == request.id


# -- guarded by the ACL -----------------------------------------------------------------------

TOKENS = {
    "asker": "tok-asker-0123456789",
    "nobody": "tok-nobody-0123456789",
    "responder": "tok-responder-0123456789",
}


@asynccontextmanager
async def _secured() -> AsyncIterator[Any]:
    import hashlib

    from eventmesh.server.sidecar import Sidecar

    tokens = [
        {"principal": p, "sha256": hashlib.sha256(t.encode()).hexdigest()}
        for p, t in TOKENS.items()
    ]
    config = {
        "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
        "auth": {"tokens": tokens},
        "acl": [
            {"principal": "asker", "allow": ["publish"], "topics": ["pings"]},
            {
                "principal": "responder",
                "allow": ["subscribe"],
                "topics": ["pings"],
                "groups": ["responders"],
            },
            {"principal": "responder", "allow": ["publish"], "topics": [f"{INBOX_PREFIX}*"]},
        ],
    }
    with anyio.fail_after(30):
        async with Sidecar(config) as sidecar:
            yield sidecar


@pytest.mark.parametrize("remote", ["grpc", "http"])
async def test_a_request_needs_publish_on_its_topic(remote: str) -> None:
    """With auth on, a request needs the publish grant on its topic, and no grant on the
    reply inbox; without it the request is refused (403 / PERMISSION_DENIED)."""
    from eventmesh.errors import PermissionDeniedError

    async with _secured() as sidecar, sidecar.mesh.subscribe("pings", "echo", handler=echo):
        async with _connect(sidecar, remote, "asker") as asker:
            reply = await asker.request("pings", ping(4), timeout=DEADLINE)
            assert reply.data == {"n": 4}
        async with _connect(sidecar, remote, "nobody") as nobody:
            with pytest.raises(PermissionDeniedError):
                await nobody.request("pings", ping(), timeout=DEADLINE)
    assert sidecar.mesh._request_counts()["answered"] == 1


def test_the_sdk_docs_example_runs(tmp_path: Any) -> None:
    """The Request-reply program in docs/sdk.md runs and prints what it says."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "sdk.md").read_text("utf-8")
    section = page[page.index("## Request-reply") :]
    block = re.search(r"```python\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert block is not None
    script = tmp_path / "request_reply.py"
    script.write_text(block.group(1), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["price.quoted {'sku': 'A1', 'eur': 12}", "no reply: 0.2"]


def _connect(sidecar: Any, remote: str, who: str) -> Client:
    from eventmesh.client.grpc import GrpcClient
    from eventmesh.client.http import HttpClient

    if remote == "http":
        return HttpClient(sidecar.http_url, token=TOKENS[who])
    return GrpcClient(sidecar.grpc_target, token=TOKENS[who])


@pytest.mark.parametrize("remote", ["grpc", "http"])
async def test_a_remote_responder_needs_publish_on_the_inboxes(remote: str) -> None:
    """With auth on, a responder behind the sidecar answers with the publish grant on
    eventmesh.inbox.* (its reply is a publish to the requester's inbox)."""
    async with (
        _secured() as sidecar,
        _connect(sidecar, remote, "responder") as responder,
        responder.subscribe("pings", "responders", handler=echo),
        _connect(sidecar, remote, "asker") as asker,
    ):
        reply = await asker.request("pings", ping(11), timeout=DEADLINE)
    assert reply.data == {"n": 11}
