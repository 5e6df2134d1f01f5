"""Review of the HTTP API with auth on: every route that takes a body refuses an
unauthenticated ``Expect: 100-continue`` request with 401 before inviting the body
(docs/security.md), ack and nack included."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import anyio
import pytest

from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

FREE = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}
DIGEST = hashlib.sha256(b"tok-billing-0123456789").hexdigest()


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    config = {
        "server": FREE,
        "auth": {"tokens": [{"principal": "billing", "sha256": DIGEST}]},
        "acl": [{"principal": "billing", "allow": ["subscribe"], "topics": ["o"], "groups": ["*"]}],
    }
    with anyio.fail_after(30):
        async with Sidecar(config) as running:
            yield running


@pytest.mark.parametrize(
    "path",
    [
        "/topics/orders/events",
        "/eventmesh/publish/orders",
        "/subscriptions",
        "/subscriptions/x/ack",
        "/subscriptions/x/nack",
    ],
)
async def test_an_unauthenticated_expect_continue_is_401_before_the_body(
    sidecar: Sidecar, path: str
) -> None:
    host, port = sidecar.http_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            "Content-Type: application/json\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        await writer.drain()
        with anyio.fail_after(5):
            status = await reader.readuntil(b"\r\n")
    finally:
        writer.close()
    assert status.strip() == b"HTTP/1.1 401 Unauthorized"
