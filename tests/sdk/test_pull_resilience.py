"""The HTTP client's pull subscription against a sidecar that answers badly: a refused
poll, an unreadable event and an oversized answer each cost a back-off or one event,
never the subscription. The sidecar here is a scripted aiohttp app on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

from eventmesh import Event
from eventmesh.client.http import HttpClient
from eventmesh.testing.polling import eventually

pytestmark = pytest.mark.anyio

Answer = Callable[[web.Request], web.Response]


def _event(event_id: str, **attrs: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id, "type": "t", "source": "/s", **attrs}


def _deliveries(*events: dict[str, Any]) -> web.Response:
    return web.json_response(
        {
            "deliveries": [
                {"delivery_id": f"d-{event['id']}", "attempt": 1, "event": event}
                for event in events
            ]
        }
    )


@asynccontextmanager
async def _sidecar(answers: list[web.Response]) -> AsyncIterator[tuple[str, list[Any]]]:
    """A sidecar whose polls get ``answers`` in turn, then nothing; yields its URL and
    the bodies of the acks and nacks it got."""
    settled: list[Any] = []

    async def create(request: web.Request) -> web.Response:
        return web.json_response({"id": "s1"}, status=201)

    async def poll(request: web.Request) -> web.Response:
        if answers:
            return answers.pop(0)
        await asyncio.sleep(0.05)  # a short long poll
        return _deliveries()

    async def settle(request: web.Request) -> web.Response:
        settled.append(await request.json())
        return web.json_response({})

    async def delete(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.add_routes(
        [
            web.post("/subscriptions", create),
            web.get("/subscriptions/s1/events", poll),
            web.post("/subscriptions/s1/ack", settle),
            web.post("/subscriptions/s1/nack", settle),
            web.delete("/subscriptions/s1", delete),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", settled
    finally:
        await runner.cleanup()


async def test_a_refused_poll_and_an_unreadable_event_stop_nothing() -> None:
    """A 500 on a poll is retried after a back-off, and an event that is not valid is
    handed back to be dead-lettered while the valid one beside it is handled (either
    used to stop the handler subscription for good)."""
    answers = [
        web.json_response({"type": "EventMeshError", "detail": "boom"}, status=500),
        _deliveries(_event("good"), {"specversion": "1.0", "id": "bad", "type": "t"}),
    ]
    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(event.id)

    with anyio.fail_after(20):
        async with _sidecar(answers) as (url, settled), HttpClient(url) as client:
            sub = await client.subscribe("in", "g", handler=handler)
            await eventually(lambda: handled == ["good"], timeout=10)
            await eventually(lambda: len(settled) == 2, timeout=5)
            assert not sub.closed
    assert {"delivery_ids": ["d-good"]} in settled
    [nack] = [body for body in settled if body["delivery_ids"] == ["d-bad"]]
    assert nack["give_up"] is True
    assert "source" in nack["error"]


async def test_an_answer_over_the_poll_s_max_is_refused_and_polling_goes_on() -> None:
    """A sidecar that sends more deliveries than the poll asked for is not believed
    (its deliveries would pass the window): that answer is dropped, and the next one
    is read."""
    too_many = _deliveries(*(_event(f"over-{n}") for n in range(300)))
    answers = [too_many, _deliveries(_event("next"))]
    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(event.id)

    with anyio.fail_after(20):
        async with _sidecar(answers) as (url, _), HttpClient(url) as client:
            await client.subscribe("in", "g", handler=handler)
            await eventually(lambda: "next" in handled, timeout=10)
    assert handled == ["next"]
