"""Helpers for the end-to-end fidelity tests (issue 16), shared with the Kafka and NATS
plugins' tests: a webhook receiver that keeps each request's raw headers and body, the
sidecar config that routes one topic to receivers, and the event that is hard to keep."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from aiohttp import web

# A body a JSON encoder would rewrite (spacing, a duplicate key, -0, an escape, a big
# number), a time with nanoseconds, and a subject that needs percent-encoding.
BODY = b'{ "b" : 1, "b": -0, "s": "caf\\u00e9", "n": 12345678901234567890123 }'
NANO_TIME = "2024-05-01T12:00:00.123456789Z"
SUBJECT = "orders/42 ünï"
PUBLISH_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "fid-1",
    "ce-source": "/fidelity",
    "ce-type": "com.example.fidelity",
    "ce-time": NANO_TIME,
    "ce-subject": "orders/42%20%C3%BCn%C3%AF",
    "content-type": "application/json",
}


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1: each request's headers (as raw bytes pairs, and
    decoded) and body, in arrival order."""

    url: str
    requests: list[tuple[list[tuple[bytes, bytes]], dict[str, str], bytes]] = field(
        default_factory=list
    )

    async def wait_for(self, count: int, timeout: float = 30) -> None:
        """Wait (polling, bounded) until ``count`` requests arrived."""
        with anyio.fail_after(timeout):
            while len(self.requests) < count:
                await anyio.sleep(0.02)

    def header(self, index: int, name: str) -> bytes:
        """The raw bytes of header ``name`` of request ``index``."""
        for key, value in self.requests[index][0]:
            if key.lower() == name.encode():
                return value
        raise KeyError(name)


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    """A running :class:`Receiver`, stopped on exit."""
    got = Receiver(url="")

    async def sink(request: web.Request) -> web.Response:
        got.requests.append(
            (list(request.raw_headers), dict(request.headers), await request.read())
        )
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/events", sink)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    got.url = f"http://127.0.0.1:{runner.addresses[0][1]}/events"
    try:
        yield got
    finally:
        await runner.cleanup()


def sidecar_config(
    topic: str, sinks: dict[str, dict[str, Any]], connector: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A sidecar on free ports with one subscription per named sink, all on ``topic``."""
    config: dict[str, Any] = {
        "subscriptions": [
            {"name": name, "topic": topic, "start": "earliest", "sink": sink}
            for name, sink in sinks.items()
        ],
        "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
    }
    if connector is not None:
        config["connectors"] = {"default": connector}
    return config
