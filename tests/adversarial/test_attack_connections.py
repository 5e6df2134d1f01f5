"""Slow clients: hundreds of connections that send half a request line and then nothing.
The HTTP port holds at most server.http.max_connections of them, closes each after
server.http.header_timeout, and the admin port answers throughout."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import anyio
import pytest
from adversary import BODY_TIMEOUT, HEADER_TIMEOUT, MAX_CONNECTIONS, Sidecar

pytestmark = pytest.mark.anyio

SLOW_CLIENTS = 600
SLACK = 20
"""Connections the server may still be closing when the test counts."""


@dataclass
class Slow:
    """One half-open client connection and when the server closed it (None: still open)."""

    writer: asyncio.StreamWriter
    closed_at: float | None = None


async def _open(host: str, port: int, into: list[Slow], failed: list[str]) -> None:
    try:
        with anyio.fail_after(5):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        failed.append(repr(exc))  # refused outright: as good as closed
        return
    slow = Slow(writer)
    into.append(slow)
    try:
        writer.write(b"GET /subscriptions HT")  # half a request line, then nothing
        await writer.drain()
        while await reader.read(1024):  # b"" once the server closes (after any answer)
            pass
    except OSError:
        pass
    slow.closed_at = time.monotonic()


async def test_half_open_connections_are_capped_and_timed_out(sidecar: Sidecar) -> None:
    """600 half-open connections: the ones past max_connections are closed at once, the
    rest after header_timeout; /healthz answers within 1 s throughout; then a normal
    request is served."""
    host, port = sidecar.http_url.removeprefix("http://").rsplit(":", 1)
    conns: list[Slow] = []
    failed: list[str] = []
    with sidecar.watch() as watch:
        async with anyio.create_task_group() as tasks:
            opened = time.monotonic()
            for _ in range(SLOW_CLIENTS):
                tasks.start_soon(_open, host, int(port), conns, failed)
            try:
                # Before any header timeout can fire, the server holds at most its cap.
                cap_deadline = opened + HEADER_TIMEOUT * 0.8
                while time.monotonic() < cap_deadline:
                    held = sum(c.closed_at is None for c in conns)
                    if len(conns) + len(failed) == SLOW_CLIENTS and held <= MAX_CONNECTIONS + SLACK:
                        break
                    await anyio.sleep(0.05)
                held = sum(c.closed_at is None for c in conns)
                assert held <= MAX_CONNECTIONS + SLACK, (
                    f"{held} of {SLOW_CLIENTS} half-open connections still open "
                    f"{time.monotonic() - opened:.1f} s after opening; the cap is "
                    f"{MAX_CONNECTIONS} (server.http.max_connections)"
                )
                # After the header timeout every half-open connection is closed.
                all_deadline = opened + HEADER_TIMEOUT + 5
                while time.monotonic() < all_deadline:
                    if all(c.closed_at is not None for c in conns):
                        break
                    await anyio.sleep(0.1)
                still = sum(c.closed_at is None for c in conns)
                assert not still, (
                    f"{still} half-open connections still open "
                    f"{time.monotonic() - opened:.1f} s after opening; header_timeout is "
                    f"{HEADER_TIMEOUT} s (server.http.header_timeout)"
                )
            finally:
                for conn in conns:
                    conn.writer.close()
                tasks.cancel_scope.cancel()
    watch.check()
    await sidecar.assert_serves()


async def _slow_body(host: str, port: int, answers: list[bytes]) -> None:
    """Headers promising 1,000 bytes of body, 10 of them, then nothing: what came back
    before the server closed (or a note that it never did)."""
    reader, writer = await asyncio.open_connection(host, port)
    answer = b""
    try:
        writer.write(
            b"POST /topics/slow/events HTTP/1.1\r\nHost: x\r\n"
            b"ce-specversion: 1.0\r\nce-id: 1\r\nce-source: /a\r\nce-type: t\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 1000\r\n\r\n0123456789"
        )
        await writer.drain()
        with anyio.move_on_after(BODY_TIMEOUT + 5) as scope:
            try:
                while chunk := await reader.read(1024):
                    answer += chunk
            except OSError:
                pass
        if scope.cancelled_caught:
            answer = f"still open {BODY_TIMEOUT + 5} s later".encode()
    finally:
        writer.close()
    answers.append(answer)


async def test_a_body_that_never_comes_is_timed_out(sidecar: Sidecar) -> None:
    """50 requests that send their headers and 10 of 1,000 promised body bytes are
    answered 408 and disconnected after server.http.body_timeout; /healthz stays fast."""
    host, port = sidecar.http_url.removeprefix("http://").rsplit(":", 1)
    answers: list[bytes] = []
    with sidecar.watch() as watch:
        async with anyio.create_task_group() as tasks:
            for _ in range(50):
                tasks.start_soon(_slow_body, host, int(port), answers)
    watch.check()
    statuses = sorted({a.split(b"\r\n", 1)[0].decode() for a in answers})
    assert statuses == ["HTTP/1.1 408 Request Timeout"], statuses
    await sidecar.assert_serves(topic="slow")
