"""The sidecar's subscriptions kept in the local store: they survive kill -9; one stored
that no longer starts is skipped; a topic on a connector without state keeps them in
memory as before."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eventmesh.client.connect import connect
from eventmesh.connectors.local import LocalConnector
from eventmesh.server._substore import BUCKET, StoredSubscription, encode
from eventmesh.server.sidecar import Sidecar
from eventmesh.testing._sidecars import sidecar_config, subscription_survives_kill

pytestmark = pytest.mark.anyio


def local(tmp: Path) -> dict[str, Any]:
    return {"type": "local", "data_dir": str(tmp / "data")}


async def test_subscription_survives_kill_9_on_the_local_store(tmp_path: Path) -> None:
    """A webhook subscription made over HTTP is served again after kill -9 and a restart,
    and every accepted event reaches the sink."""
    config = sidecar_config({"default": local(tmp_path)})
    await subscription_survives_kill(tmp_path, config, f"kept-{uuid.uuid4().hex[:12]}")


def in_process(connectors: dict[str, Any], **extra: Any) -> dict[str, Any]:
    config = sidecar_config(connectors)
    config.pop("logging")
    config.update(extra)
    return config


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> int:
    async with session.request(method, url, json=body) as response:
        await response.read()
        return response.status


async def listed(session: aiohttp.ClientSession, sidecar: Sidecar) -> list[str]:
    async with session.get(f"{sidecar.http_url}/subscriptions") as response:
        return [s["id"] for s in (await response.json())["subscriptions"]]


async def test_a_stored_subscription_that_no_longer_starts_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored subscription beyond limits.max_subscriptions, one whose filter the
    current limits refuse, or an unreadable one is logged and skipped; the others start
    and the sidecar serves."""
    data = local(tmp_path)
    async with LocalConnector(LocalConnector.Config(data_dir=data["data_dir"])) as connector:
        store = connector.state(BUCKET)
        assert store is not None
        for n in range(3):
            spec = {"id": f"s{n}", "topic": "orders"}
            await store.put(f"s{n}", encode(StoredSubscription(spec=spec)))
        await store.put("broken", b"{not json")
        deep: dict[str, Any] = {"exact": {"type": "x"}}
        for _ in range(6):
            deep = {"all": [deep]}
        deep_spec = {"id": "deep", "topic": "orders", "filter": deep}
        await store.put("deep", encode(StoredSubscription(spec=deep_spec)))
    limits = {"max_subscriptions": 2, "filters": {"max_depth": 4}}
    config = in_process({"default": data}, limits=limits)
    async with Sidecar(config) as sidecar, aiohttp.ClientSession() as session:
        ids = await listed(session, sidecar)
    assert len(ids) == 2
    assert set(ids) <= {"s0", "s1", "s2"}
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("deep" in m and "max_depth" in m for m in errors), errors
    assert any("broken" in m and "cannot be read" in m for m in errors), errors
    assert any("max_subscriptions" in m for m in errors), errors


async def test_a_delete_removes_the_stored_subscription(tmp_path: Path) -> None:
    """DELETE removes the subscription from the store: a restart does not bring it back."""
    config = in_process({"default": local(tmp_path)})
    body = {"id": "gone", "topic": "orders"}
    async with aiohttp.ClientSession() as session:
        async with Sidecar(config) as sidecar:
            assert await call(session, "POST", f"{sidecar.http_url}/subscriptions", body) == 201
        async with Sidecar(config) as sidecar:
            url = f"{sidecar.http_url}/subscriptions/gone"
            assert await call(session, "GET", url) == 200
            assert await call(session, "DELETE", url) == 204
        async with Sidecar(config) as sidecar:
            assert await call(session, "GET", f"{sidecar.http_url}/subscriptions/gone") == 404


async def test_memory_topics_and_persist_false_keep_subscriptions_in_memory(
    tmp_path: Path,
) -> None:
    """A topic routed to the memory connector stores nothing, nor does a subscription
    made with persist: false (as the remote SDK makes them): both are gone after a
    restart, while one on the local store stays."""
    config = in_process(
        {"default": local(tmp_path), "fast": {"type": "memory"}},
        topics={"scratch": {"connector": "fast"}},
    )
    bodies = [
        {"id": "kept", "topic": "orders"},
        {"id": "lost", "topic": "scratch"},
        {"id": "session", "topic": "orders", "persist": False},
    ]
    async with aiohttp.ClientSession() as session:
        async with Sidecar(config) as sidecar:
            for body in bodies:
                url = f"{sidecar.http_url}/subscriptions"
                assert await call(session, "POST", url, body) == 201
            async with connect(sidecar.http_url) as client:
                sdk = client.subscribe("orders", group="sdk")
                await sdk.start()
                assert len(await listed(session, sidecar)) == 4
                store = sidecar.mesh.connectors["default"].state(BUCKET)
                assert store is not None
                assert set(await store.load()) == {"kept"}
                await sdk.close()
        async with Sidecar(config) as sidecar:
            ids = await listed(session, sidecar)
    assert ids == ["kept"]


def with_auth(config: dict[str, Any], groups: list[str]) -> dict[str, Any]:
    """``config`` with one token principal, billing, allowed to subscribe in ``groups``."""
    digest = hashlib.sha256(b"tok-billing-0123456789").hexdigest()
    rule = {"principal": "billing", "allow": ["subscribe"], "topics": ["orders"]}
    return {
        **config,
        "auth": {"tokens": [{"principal": "billing", "sha256": digest}]},
        "acl": [{**rule, "groups": groups}],
    }


async def test_a_stored_subscription_starts_again_as_its_owner(tmp_path: Path) -> None:
    """With auth on, a stored subscription keeps its owner, and the ACL is asked again on
    start: once the owner's rule no longer covers its group, it is skipped."""
    base = in_process({"default": local(tmp_path)})
    headers = {"Authorization": "Bearer tok-billing-0123456789"}
    body = {"id": "billing-1", "topic": "orders"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with Sidecar(with_auth(base, ["billing*"])) as sidecar:
            assert await call(session, "POST", f"{sidecar.http_url}/subscriptions", body) == 201
        async with Sidecar(with_auth(base, ["billing*"])) as sidecar:
            url = f"{sidecar.http_url}/subscriptions/billing-1"
            async with session.get(url) as response:
                assert response.status == 200
                assert (await response.json())["owner"] == "billing"
        async with Sidecar(with_auth(base, ["other*"])) as sidecar:
            assert await listed(session, sidecar) == []
