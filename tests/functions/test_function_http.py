"""HTTP functions: the event POSTed in binary mode, replies from a 200 CloudEvent body,
retries as webhook push does them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from fn_support import FAST, eventually, order, read

from eventmesh import Mesh
from eventmesh.functions.function import CAUSATION_EXTENSION

pytestmark = pytest.mark.anyio

Answer = Callable[[web.Request, int], Awaitable[web.Response]]


@asynccontextmanager
async def server(answer: Answer) -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An aiohttp server on 127.0.0.1 answering POST /fn; yields its URL and the
    headers of each request."""
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return await answer(request, len(seen))

    app = web.Application()
    app.router.add_post("/fn", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/fn", seen
    finally:
        await runner.cleanup()


def http_function(url: str, **extra: object) -> dict[str, object]:
    """A config with one HTTP function on topic 'orders' replying to 'out'."""
    spec = {
        "name": "remote",
        "trigger": {"topic": "orders", "delivery": FAST},
        "url": url,
        "reply_to": "out",
        **extra,
    }
    return {"functions": [spec]}


async def reply_once(request: web.Request, n: int) -> web.Response:
    """Answer with a binary-mode CloudEvent."""
    headers = {"ce-specversion": "1.0", "ce-id": f"r{n}", "ce-source": "/remote",
               "ce-type": "com.example.enriched", "content-type": "application/json"}  # fmt: skip
    return web.Response(status=200, body=b'{"ok": true}', headers=headers)


async def test_an_http_function_gets_the_event_in_binary_mode_and_replies() -> None:
    """The event is POSTed with ce- headers; the 200 CloudEvent answer is published to
    reply_to with causationid pointing at the event."""
    async with server(reply_once) as (url, seen), Mesh(http_function(url)) as mesh:
        cause = order(7, subject="o-7")
        await mesh.publish("orders", cause)
        (reply,) = await read(mesh, "out", 1)
        runner = mesh.functions[0]
        assert runner.kind == "http"
        assert (runner.stats.invocations, runner.stats.replies) == (1, 1)
    assert seen[0]["ce-id"] == cause.id
    assert seen[0]["ce-subject"] == "o-7"
    assert (reply.type, reply.data) == ("com.example.enriched", {"ok": True})
    assert reply.extensions[CAUSATION_EXTENSION] == cause.id


async def test_an_http_function_is_retried_on_503_and_acks_on_204() -> None:
    """A 503 is retried under the policy; the 204 that follows acks without a reply."""

    async def flaky(request: web.Request, n: int) -> web.Response:
        return web.Response(status=503 if n == 1 else 204)

    async with server(flaky) as (url, seen), Mesh(http_function(url)) as mesh:
        await mesh.publish("orders", order(1))
        runner = mesh.functions[0]
        await eventually(lambda: runner.stats.invocations == 2 and not runner.stats.in_flight)
        sub = next(s for s in mesh.subscriptions if s.name == "function.remote")
        await eventually(lambda: sub.stats.delivered == 1)
        assert (runner.stats.failures, runner.stats.replies) == (1, 0)
    assert len(seen) == 2


async def test_an_http_function_refusing_with_400_is_dead_lettered_at_once() -> None:
    """A 400 is not retried (the webhook retry table): the event is dead-lettered."""

    async def refuse(request: web.Request, n: int) -> web.Response:
        return web.Response(status=400, text="bad order")

    async with server(refuse) as (url, seen), Mesh(http_function(url)) as mesh:
        await mesh.publish("orders", order(1))
        (dead,) = await read(mesh, "orders.dlq", 1)
    assert len(seen) == 1
    assert "answered 400" in dead.extensions["deadlettererror"]


async def test_an_http_function_past_its_timeout_is_retried() -> None:
    """An endpoint slower than the function's timeout counts as a timeout and is retried."""
    import anyio

    async def slow_first(request: web.Request, n: int) -> web.Response:
        if n == 1:
            await anyio.sleep(5)
        return web.Response(status=204)

    async with server(slow_first) as (url, _), Mesh(http_function(url, timeout="1s")) as mesh:
        await mesh.publish("orders", order(1))
        runner = mesh.functions[0]
        await eventually(lambda: runner.stats.invocations == 2 and not runner.stats.in_flight)
        assert runner.stats.failures == 1
