"""GET /topics/{topic}/events browses without consuming; POST /deadletters/{topic}/replay
republishes dead letters once; both refuse what the ACL does not grant."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web

from eventmesh import Event, Mesh
from eventmesh.config import HttpListener
from eventmesh.connectors.base import Connector
from eventmesh.connectors.memory import MemoryConnector
from eventmesh.delivery.deadletter import dead_letter_event
from eventmesh.server.http import create_app
from eventmesh.server.sidecar import Sidecar
from eventmesh.server.subscriptions import Registry

pytestmark = pytest.mark.anyio


def dead(n: int, *, reason: str = "failed", group: str = "billing", topic: str = "orders") -> Event:
    event = Event(type="t", source="/shop", id=f"{topic}-{reason}-{n}", data={"n": n})
    return dead_letter_event(
        event, reason=reason, error="ValueError: boom", attempts=1, topic=topic, group=group
    )


async def test_browse_pages_with_the_cursor_and_consumes_nothing(serve: Any) -> None:
    """Pages of at most ``limit`` events, each with partition, offset, timestamp and the
    event in the JSON format, walk the topic with ``next``; a group that joins
    afterwards still gets every event; bad parameters are 400s naming them."""
    async with serve() as api:
        ids = await api.mesh.publish(
            "orders", [Event(type="t", source="/s", data=i) for i in range(7)]
        )
        seen: list[str] = []
        after = ""
        for _ in range(10):
            answer = await api.call("GET", f"/topics/orders/events?limit=3&after={after}")
            assert answer.status == 200, answer.body
            events = answer.body["events"]
            assert len(events) <= 3
            if not events:
                break
            for item in events:
                assert set(item) == {"partition", "offset", "timestamp", "event"}
                assert item["timestamp"].endswith("Z")
                assert item["event"]["specversion"] == "1.0"
            seen += [item["event"]["id"] for item in events]
            after = answer.body["next"]
        assert sorted(seen) == sorted(ids)

        future = (await api.call("GET", "/topics/orders/events?since=2999-01-01T00:00:00Z")).body
        assert future["events"] == []
        also = (await api.call("GET", "/topics/orders/events?from=2999-01-01T00:00:00Z")).body
        assert also["events"] == []
        for query, key in (
            ("since=yesterday", "since"),
            ("since=2026-01-01T00:00:00", "since"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("after=zz", "after"),
        ):
            answer = await api.call("GET", f"/topics/orders/events?{query}")
            assert answer.status == 400, query
            assert answer.body["key"] == key, answer.body
        got = await api.read_topic("orders", 7)
        assert sorted(e.id for e in got) == sorted(ids)


class _NoBrowsing(MemoryConnector):
    """A connector that keeps the contract's default read(): it cannot browse."""

    read = Connector.read


async def test_a_topic_whose_connector_cannot_browse_is_a_400_that_says_so() -> None:
    """Browsing a topic on a connector without read() answers 400 naming the connector."""
    async with (
        Mesh(connectors={"default": _NoBrowsing(name="default")}) as mesh,
        _app(mesh) as (url, session),
        session.get(f"{url}/topics/orders/events") as response,
    ):
        body = msgspec.json.decode(await response.read())
        assert response.status == 400
        assert "cannot browse" in body["detail"]


async def test_show_returns_the_copies_of_an_id_or_404(serve: Any) -> None:
    """GET /topics/{topic}/events/{id} gives every retained event with that id."""
    async with serve() as api:
        await api.mesh.publish("orders.dlq", [dead(1), dead(2)])
        answer = await api.call("GET", "/topics/orders.dlq/events/orders-failed-2")
        assert answer.status == 200
        [item] = answer.body["events"]
        assert item["event"]["deadletterreason"] == "failed"
        assert (await api.call("GET", "/topics/orders.dlq/events/nope")).status == 404


async def test_replay_selects_dry_runs_and_never_doubles(serve: Any) -> None:
    """A dry run counts without publishing; a replay by reason or subscription publishes
    to the original topic without deadletter* extensions; the same replay again skips
    what it did; a bad body is a 400 naming the key."""
    async with serve() as api:
        letters = [dead(i) for i in range(3)] + [
            dead(i, reason="expired", group="ship") for i in range(2)
        ]
        await api.mesh.publish("orders.dlq", letters)
        path = "/deadletters/orders.dlq/replay"

        dry = (await api.call("POST", path, json={"reason": "expired", "dry_run": True})).body
        assert (dry["selected"], dry["replayed"], dry["dry_run"]) == (2, 2, True)
        assert (await api.call("GET", "/topics/orders/events")).body["events"] == []

        done = await api.call("POST", path, json={"subscription": "ship"})
        assert done.status == 200, done.body
        assert sorted(done.body["ids"]) == ["orders-expired-0", "orders-expired-1"]
        stored = (await api.call("GET", "/topics/orders/events")).body["events"]
        assert sorted(s["event"]["id"] for s in stored) == sorted(done.body["ids"])
        assert not [k for s in stored for k in s["event"] if k.startswith("deadletter")]

        again = (await api.call("POST", path, json={"subscription": "ship"})).body
        assert (again["replayed"], again["skipped"]) == (0, 2)
        assert sorted(again["skipped_ids"]) == sorted(done.body["ids"])

        until = (await api.call("POST", path, json={"until": "2000-01-01T00:00:00Z"})).body
        assert until["selected"] == 0
        rest = (await api.call("POST", path, json={"limit": 2})).body
        assert (rest["replayed"], rest["more"]) == (2, True)
        last = (await api.call("POST", path, json={})).body
        assert (last["replayed"], last["skipped"], last["more"]) == (1, 4, False)
        assert len((await api.call("GET", "/topics/orders/events")).body["events"]) == 5

        for body, key in (({"reson": "failed"}, "reson"), ({"limit": 0}, None)):
            answer = await api.call("POST", path, json=body)
            assert answer.status == 400, body
            if key is not None:
                assert key in answer.body["detail"]


# -- with auth on ------------------------------------------------------------------------------

TOKENS = {
    "reader": "tok-reader-0123456789",
    "operator": "tok-operator-0123456789",
    "nobody": "tok-nobody-0123456789",
}
ACL: list[dict[str, Any]] = [
    {"principal": "reader", "allow": ["subscribe"], "topics": ["orders.dlq"], "groups": ["*"]},
    {
        "principal": "operator",
        "allow": ["subscribe", "publish"],
        "topics": ["orders", "orders.dlq"],
        "groups": ["*"],
    },
    {"principal": "nobody", "allow": ["publish"], "topics": ["elsewhere"]},
]


def _secured() -> dict[str, Any]:
    tokens = [
        {"principal": p, "sha256": hashlib.sha256(t.encode()).hexdigest()}
        for p, t in TOKENS.items()
    ]
    free = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}
    return {"server": free, "auth": {"tokens": tokens}, "acl": ACL}


async def test_browse_needs_subscribe_and_replay_needs_publish_on_every_target() -> None:
    """Browsing needs subscribe on the topic; a replay needs subscribe on the dead-letter
    topic and publish on each topic it would republish to, checked before anything is
    published (a dry run too); no credentials is a 401."""
    with anyio.fail_after(30):
        async with Sidecar(_secured()) as sidecar, aiohttp.ClientSession() as session:
            await sidecar.mesh.publish("orders.dlq", [dead(1), dead(2, topic="payments")])
            base = sidecar.http_url

            async def call(who: str | None, method: str, path: str, body: Any = None) -> int:
                headers = {} if who is None else {"Authorization": f"Bearer {TOKENS[who]}"}
                data = None if body is None else msgspec.json.encode(body)
                async with session.request(method, base + path, data=data, headers=headers) as r:
                    await r.read()
                    return r.status

            browse, replay = "/topics/orders.dlq/events", "/deadletters/orders.dlq/replay"
            assert await call(None, "GET", browse) == 401
            assert await call("nobody", "GET", browse) == 403
            assert await call("reader", "GET", browse) == 200
            assert await call("reader", "GET", browse + "/orders-failed-1") == 200
            assert await call("nobody", "GET", browse + "/orders-failed-1") == 403
            assert await call("reader", "POST", replay, {"dry_run": True}) == 403
            assert await call("nobody", "POST", replay, {}) == 403
            # payments is not the operator's to publish to: all refused, nothing published
            assert await call("operator", "POST", replay, {}) == 403
            assert await call("operator", "POST", replay, {"dry_run": True}) == 403
            assert await sidecar.mesh.connector("orders").read("orders") == []
            assert (
                await call("operator", "POST", replay, {"subscription": "billing", "limit": 1})
                == 200
            )
            [stored] = await sidecar.mesh.connector("orders").read("orders")
            assert stored.event.id == "orders-failed-1"


# -- helpers -------------------------------------------------------------------------------------


@asynccontextmanager
async def _app(mesh: Mesh) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """The HTTP API of ``mesh`` on 127.0.0.1, port 0, and a client session."""
    async with Registry(mesh) as registry:
        runner = web.AppRunner(create_app(mesh, registry, HttpListener()))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            async with aiohttp.ClientSession() as session:
                yield f"http://{host}:{port}", session
            await registry.close()
        finally:
            await runner.cleanup()
