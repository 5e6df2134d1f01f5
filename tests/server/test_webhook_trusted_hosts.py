"""Hosts the config file names are trusted by name for the config's own webhooks; with
auth on, a caller's webhook through the API is held to the allowed networks."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

FREE = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}
TOKEN = "tok-billing-0123456789"
# A name the operator's own subscription delivers to: trusted by name, so it need not
# resolve into server.webhook.allowed_networks (.test is reserved, RFC 2606).
INTERNAL = "http://internal-billing.test:8080/events"
CONFIG_SUBSCRIPTION = {"name": "audit", "topic": "audit", "sink": {"webhook": INTERNAL}}


def config(*, auth: bool) -> dict[str, Any]:
    conf: dict[str, Any] = {"server": FREE, "subscriptions": [CONFIG_SUBSCRIPTION]}
    if auth:
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        conf["auth"] = {"tokens": [{"principal": "billing", "sha256": digest}]}
        conf["acl"] = [
            {"principal": "billing", "allow": ["subscribe"], "topics": ["*"], "groups": ["*"]}
        ]
    return conf


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def create(session: aiohttp.ClientSession, sidecar: Sidecar, sink: str) -> Any:
    spec = {"topic": "orders", "group": "billing", "sink": sink}
    async with session.post(
        f"{sidecar.http_url}/subscriptions",
        json=spec,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as answer:
        return answer.status, await answer.json()


async def test_with_auth_a_callers_webhook_may_not_use_a_host_the_config_trusts(
    session: aiohttp.ClientSession,
) -> None:
    """A principal allowed to subscribe cannot aim its webhook at a host the operator's
    config names (another port or path of an internal service): 400 on sink."""
    with anyio.fail_after(30):
        async with Sidecar(config(auth=True)) as sidecar:
            status, body = await create(session, sidecar, "http://internal-billing.test:9/admin")
    assert status == 400, body
    assert body["key"] == "sink"


async def test_without_auth_the_config_hosts_stay_trusted_for_everyone(
    session: aiohttp.ClientSession,
) -> None:
    """With auth off nothing changes: the sidecar trusts its local callers as before."""
    with anyio.fail_after(30):
        async with Sidecar(config(auth=False)) as sidecar:
            status, body = await create(session, sidecar, "http://internal-billing.test:9/x")
    assert status == 201, body
