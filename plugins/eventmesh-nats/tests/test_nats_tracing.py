"""Tracing over a real NATS server (JetStream): an event published over HTTP, stored in
JetStream, delivered to a webhook whose reply is stored and answered by a function whose
answer is stored and delivered, is one trace; the context travels in the messages'
ce-traceparent header."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import anyio
import pytest

from eventmesh import Event
from eventmesh.bindings.http import to_binary
from eventmesh.server.sidecar import Sidecar
from eventmesh.testing.tracing import ReplyingWebhook, assert_one_trace, recording_provider

pytestmark = [pytest.mark.nats, pytest.mark.anyio]


def chain(orders: str, replies: str, answers: str) -> dict[str, str | None]:
    """Each span of the one trace and its parent's name."""
    return {
        f"publish {orders}": None,
        f"store {orders}": f"publish {orders}",
        "deliver hook": f"publish {orders}",
        f"publish {replies}": "deliver hook",
        f"store {replies}": f"publish {replies}",
        "deliver function.answer": f"publish {replies}",
        "function answer": "deliver function.answer",
        f"publish {answers}": "function answer",
        f"store {answers}": f"publish {answers}",
        "deliver collector": f"publish {answers}",
    }


async def answer(event: Event) -> Event:
    """The configured function: answers each webhook reply with an event of its own."""
    return Event(type="order.answered", source="/answer", data={"to": event.id})


async def test_a_publish_its_webhook_delivery_and_the_reply_through_nats_are_one_trace(
    mesh_config: Callable[..., dict[str, Any]],
) -> None:
    """HTTP publish, broker store, webhook delivery, the reply's store, a function answering
    it, and the answer's store and delivery to a subscriber share one trace, each under the
    span that caused it; the subscription's lag comes down to 0."""
    orders = f"test-trace-{uuid.uuid4().hex[:12]}"
    replies = f"{orders}-replies"
    answers = f"{orders}-answers"
    got: list[Event] = []

    async def collect(event: Event) -> None:
        got.append(event)

    provider, exporter = recording_provider()
    async with ReplyingWebhook() as hook:
        config: dict[str, Any] = {
            **mesh_config(),
            "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
            "subscriptions": [
                {
                    "name": "hook",
                    "topic": orders,
                    "start": "earliest",
                    "sink": {"webhook": hook.url},
                    "reply_to": replies,
                }
            ],
            "functions": [
                {
                    "name": "answer",
                    "trigger": {"topic": replies, "start": "earliest"},
                    "handler": "test_nats_tracing:answer",
                    "reply_to": answers,
                }
            ],
        }
        async with Sidecar(config, tracer_provider=provider) as sidecar:
            await sidecar.mesh.subscribe(
                answers, "collector", handler=collect, start="earliest", name="collector"
            )
            headers, body = to_binary(Event(type="order", source="/t", id="k1"))
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{sidecar.http_url}/topics/{orders}/events", headers=headers, data=body
                ) as response,
            ):
                assert response.status == 202
            with anyio.fail_after(60):
                while not got:
                    await anyio.sleep(0.05)
                # The connector tells the lag: nothing is left once the event is acked.
                hook_sub = next(s for s in sidecar.mesh.subscriptions if s.name == "hook")
                while hook_sub.lag != 0:
                    await anyio.sleep(0.05)
    spans = assert_one_trace(exporter.get_finished_spans(), chain(orders, replies, answers))
    assert spans[f"publish {orders}"].parent is None
    assert spans[f"store {orders}"].attributes is not None
    assert spans[f"store {orders}"].attributes["eventmesh.connector"] == "default"
    assert got[0].type == "order.answered"
