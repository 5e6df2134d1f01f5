"""Every event arrives as it was sent, through a real NATS server (issue 16): HTTP in,
JetStream, webhook out byte for byte with the time's nanoseconds, in either mode."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from eventmesh.server.sidecar import Sidecar

pytestmark = [pytest.mark.nats, pytest.mark.anyio]

BODY = b'{ "b" : 1, "b": -0, "s": "caf\\u00e9", "n": 12345678901234567890123 }'
NANO_TIME = "2024-05-01T12:00:00.123456789Z"
HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "nats-fid-1",
    "ce-source": "/fidelity",
    "ce-type": "com.example.fidelity",
    "ce-time": NANO_TIME,
    "content-type": "application/json",
}


@asynccontextmanager
async def webhook() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A webhook on 127.0.0.1 that keeps each request's headers and body."""
    got: list[tuple[dict[str, str], bytes]] = []

    async def sink(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/events", sink)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/events", got
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("binding", ["binary", "structured"])
async def test_http_in_nats_http_out_byte_for_byte(
    mesh_config: Callable[..., dict[str, Any]], binding: str
) -> None:
    """A JSON body published over HTTP is stored in JetStream and pushed to a webhook as
    the very bytes published, its time with all nine digits."""
    topic = f"fid{uuid.uuid4().hex[:10]}"
    async with webhook() as (url, got):
        config = {
            **mesh_config(binding=binding),
            "subscriptions": [
                {"name": "fid", "topic": topic, "start": "earliest", "sink": {"webhook": url}}
            ],
            "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
        }
        async with Sidecar(config) as sidecar, aiohttp.ClientSession() as session:
            async with session.post(
                f"{sidecar.http_url}/topics/{topic}/events", headers=HEADERS, data=BODY
            ) as answer:
                assert answer.status == 202, await answer.text()
            with anyio.fail_after(60):
                while not got:
                    await anyio.sleep(0.05)
    headers, body = got[0]
    assert body == BODY
    assert headers["ce-time"] == NANO_TIME
