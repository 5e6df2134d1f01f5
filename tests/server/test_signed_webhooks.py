"""Webhooks with a signing secret are signed as Standard Webhooks says, on the bytes
sent, in every content mode: the spec's own library verifies what a receiver gets."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from eventmesh import Event, Mesh
from eventmesh.config import load_config
from eventmesh.delivery.webhook import Mode, WebhookSession, WebhookSink
from eventmesh.errors import ConfigError, DeliveryError
from eventmesh.testing.polling import eventually

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


class Received:
    """What a receiver got: each request's headers (lower-cased names) and body."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])

    def verified(self, secret: str = SECRET) -> list[Any]:
        """Every request's payload, each checked with the spec's library."""
        return [Webhook(secret).verify(body, headers) for headers, body in self.requests]


@asynccontextmanager
async def receiver(statuses: list[int] | None = None) -> AsyncIterator[tuple[str, Received]]:
    """A webhook receiver on 127.0.0.1, answering ``statuses`` in turn, then 204."""
    got = Received(statuses)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        got.requests.append(({k.lower(): v for k, v in request.headers.items()}, body))
        return web.Response(status=got.statuses.pop(0) if got.statuses else 204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/hook", got
    finally:
        await runner.cleanup()


async def wait_for(count: int, got: Received) -> None:
    await eventually(lambda: len(got.requests) >= count, what=f"{count} webhook requests")


@pytest.mark.parametrize("mode", ["binary", "structured", "batch"])
async def test_api_webhooks_are_signed_in_every_mode(serve: Any, mode: str) -> None:
    """A subscription with protocolsettings.signing_secret signs each POST so the
    Standard Webhooks library verifies it; the id is the event's (a digest for a
    batch); the secret is shown as ***."""
    settings = {"mode": mode, "signing_secret": SECRET, "max_batch": 3, "batch_window": 5}
    async with receiver() as (url, got), serve() as api:
        created = await api.call(
            "POST",
            "/subscriptions",
            json={"id": "signed", "topic": "orders", "sink": url, "protocolsettings": settings},
        )
        assert created.status == 201, created.body
        assert created.body["protocolsettings"]["signing_secret"] == "***"
        events = [Event(type="t", source="/s", id=f"e{i}", data={"n": i}) for i in range(3)]
        await api.mesh.publish("orders", events)
        await wait_for(1 if mode == "batch" else 3, got)
        payloads = got.verified()
        ids = [headers["webhook-id"] for headers, _ in got.requests]
        if mode == "batch":
            assert sorted(e["id"] for e in payloads[0]) == ["e0", "e1", "e2"]
            assert ids[0].startswith("batch_")
        else:
            assert sorted(ids) == ["e0", "e1", "e2"]
            assert all(h["webhook-signature"].startswith("v1,") for h, _ in got.requests)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + base64.b64encode(os.urandom(32)).decode()).verify(
                got.requests[0][1], got.requests[0][0]
            )
        await api.registry.close()


@pytest.mark.parametrize("mode", ["binary", "structured", "batch"])
async def test_a_retry_carries_the_same_webhook_id(mode: Mode) -> None:
    """The retry of a delivery that got a 503 is signed again, fresh, with the same
    webhook-id, and both requests verify."""
    async with receiver([503]) as (url, got), WebhookSession() as session:
        sink = WebhookSink(url, session=session, mode=mode, signing_secret=SECRET)
        event = Event(type="t", source="/s", id="retry-me", data=1)
        with pytest.raises(DeliveryError):
            await sink(event)
        await sink(event)
        assert len(got.requests) == 2
        got.verified()
        first, second = (headers["webhook-id"] for headers, _ in got.requests)
        assert first == second == "retry-me"
        assert got.requests[0][1] == got.requests[1][1]


async def test_a_config_webhook_is_signed() -> None:
    """sink.signing_secret in the config file signs that subscription's deliveries."""
    async with receiver() as (url, got):
        config = {
            "subscriptions": [
                {
                    "name": "signed",
                    "topic": "orders",
                    "sink": {"webhook": url, "signing_secret": SECRET},
                }
            ]
        }
        async with Mesh(config) as mesh:
            await mesh.publish("orders", Event(type="t", source="/s", id="c1", data=2))
            await wait_for(1, got)
        assert got.verified() == [2]
        assert got.requests[0][0]["webhook-id"] == "c1"


@pytest.mark.parametrize("secret", ["not base64 !", "whsec_" + base64.b64encode(b"short").decode()])
def test_a_signing_secret_that_is_not_one_fails_the_config(secret: str) -> None:
    """A secret WebhookSigner would refuse fails the load, naming the key, not quoting
    the secret."""
    config = {
        "subscriptions": [
            {
                "name": "s",
                "topic": "t",
                "sink": {"webhook": "http://127.0.0.1:9/", "signing_secret": secret},
            }
        ]
    }
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(caught.value.key).endswith("signing_secret")
    assert secret not in str(caught.value)
