"""Webhook batch mode under a dispatcher: batches tied to the window, not to concurrency."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from aiohttp import web

from eventmesh import Event, Mesh
from eventmesh.testing.polling import eventually

pytestmark = pytest.mark.anyio

WINDOW = "60s"
"""Far longer than any test waits: a batch sent here was sent without waiting it out."""


class Receiver:
    """An aiohttp server on 127.0.0.1 recording each batch; answers from ``statuses``
    (then 204), and holds each request while ``hold`` is not set."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.batches: list[tuple[int, list[dict[str, Any]]]] = []
        self.hold: anyio.Event | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.hold is not None:
            self.hold.set()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        status = self.statuses.pop(0) if self.statuses else 204
        self.batches.append((status, json.loads(await request.read())))
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=status)

    def delivered(self) -> list[dict[str, Any]]:
        """The events of the batches answered 2xx, in the order they came."""
        return [e for status, batch in self.batches if status < 300 for e in batch]


def mesh_for(url: str, *, concurrency: int, max_batch: int = 100) -> Mesh:
    sink = {"webhook": url, "mode": "batch", "max_batch": max_batch, "batch_window": WINDOW}
    delivery = {"concurrency": concurrency, "backoff": {"initial": "1ms", "max": "5ms"}}
    sub = {"name": "push", "topic": "orders", "sink": sink, "delivery": delivery}
    return Mesh({"subscriptions": [sub]})


def keyed(n: int, keys: int) -> list[Event]:
    return [
        Event(type="t", source="/s", data={"n": i}, extensions={"partitionkey": f"k{i % keys}"})
        for i in range(n)
    ]


def assert_key_order(received: list[dict[str, Any]], events: list[Event]) -> None:
    """Each key's events came in the order they were published."""
    for key in {e.extensions["partitionkey"] for e in events}:
        sent = [e.id for e in events if e.extensions["partitionkey"] == key]
        got = [e["id"] for e in received if e["partitionkey"] == key]
        assert got == sent, key


async def test_a_batch_holds_more_events_than_lanes_and_goes_without_waiting_the_window() -> None:
    """With concurrency 2, a backlog of 40 goes in batches above 2 events, each sent as
    soon as no lane can add to it (not after the 60 s window), in per-key order."""
    async with Receiver() as receiver, mesh_for(receiver.url, concurrency=2) as mesh:
        events = keyed(40, keys=5)
        await mesh.publish("orders", events)
        sub = mesh.subscriptions[0]
        await eventually(lambda: sub.stats.delivered == 40, timeout=30)
    assert max(len(batch) for _, batch in receiver.batches) > 2
    assert sorted(e["id"] for e in receiver.delivered()) == sorted(e.id for e in events)
    assert_key_order(receiver.delivered(), events)


async def test_a_full_group_never_splits_and_max_batch_holds() -> None:
    """max_batch bounds every request, also when the lanes hold more events than that."""
    async with Receiver() as receiver, mesh_for(receiver.url, concurrency=3, max_batch=7) as mesh:
        events = keyed(50, keys=4)
        await mesh.publish("orders", events)
        sub = mesh.subscriptions[0]
        await eventually(lambda: sub.stats.delivered == 50, timeout=30)
    assert all(len(batch) <= 7 for _, batch in receiver.batches)
    assert_key_order(receiver.delivered(), events)


async def test_events_are_acked_only_after_their_batch_is_answered_2xx() -> None:
    """While the receiver holds the batch nothing is delivered or acked; a 503 retries
    the batch, and after the 204 every event is acked once, each key in order."""
    async with Receiver(503) as receiver, mesh_for(receiver.url, concurrency=4) as mesh:
        receiver.hold = anyio.Event()
        events = keyed(12, keys=3)
        await mesh.publish("orders", events)
        sub = mesh.subscriptions[0]
        await eventually(lambda: len(receiver.batches) == 1, timeout=30)
        assert sub.stats.delivered == 0
        receiver.hold.set()
        await eventually(lambda: sub.stats.delivered == 12, timeout=30)
    assert receiver.batches[0][0] == 503
    assert sub.stats.retried >= 1
    assert sorted(e["id"] for e in receiver.delivered()) == sorted(e.id for e in events)
    assert_key_order(receiver.delivered(), events)
