"""Subscriptions over the HTTP API: create, list, get, delete, and push to a webhook."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

from eventmesh import Event
from eventmesh.bindings.http import from_http, to_structured

pytestmark = pytest.mark.anyio

handled: list[str] = []


async def handler(event: Event) -> None:
    """The handler of the configured subscription below."""
    handled.append(event.id)


CONFIG = {
    "subscriptions": [
        {"name": "audit", "topic": "orders", "sink": {"handler": "test_http_subscriptions:handler"}}
    ]
}


async def test_a_pull_subscription_is_created_read_listed_and_deleted(serve: Any) -> None:
    """POST answers 201 with the resource and its Location; GET and the list show it;
    DELETE answers 204, after which it is 404."""
    async with serve() as api:
        created = await api.call(
            "POST",
            "/subscriptions",
            json={"id": "p1", "topic": "t", "delivery": {"max_attempts": 3}},
        )
        assert created.status == 201
        assert created.headers["Location"] == "/subscriptions/p1"
        resource = created.body
        assert resource["id"] == "p1"
        assert resource["topic"] == "t"
        assert resource["group"] == "p1"
        assert resource["protocol"] == "pull"
        assert resource["origin"] == "api"
        assert resource["ack_deadline"] == 30.0
        assert resource["start"] == "latest"
        assert resource["delivery"]["max_attempts"] == 3
        assert resource["delivery"]["backoff"]["initial"] == 0.2
        assert resource["stats"] == {
            "received": 0,
            "delivered": 0,
            "failed": 0,
            "retried": 0,
            "dead_lettered": 0,
            "filtered": 0,
            "dropped": 0,
        }
        assert (await api.call("GET", "/subscriptions/p1")).body == resource
        listed = await api.call("GET", "/subscriptions")
        assert listed.body == {"subscriptions": [resource]}
        assert [s.name for s in api.mesh.subscriptions] == ["p1"]

        deleted = await api.call("DELETE", "/subscriptions/p1")
        assert (deleted.status, deleted.body) == (204, None)
        assert api.mesh.subscriptions == []
        for method in ("GET", "DELETE"):
            gone = await api.call(method, "/subscriptions/p1")
            assert gone.status == 404
            assert gone.body["type"] == "NotFoundError"
        assert (await api.call("GET", "/subscriptions")).body == {"subscriptions": []}


async def test_an_id_is_made_when_absent_and_a_taken_id_is_409(serve: Any) -> None:
    """Without an id the server makes a uuid4 hex, also the group; reusing an id (an API
    one or a config subscription's name) is 409."""
    async with serve(CONFIG) as api:
        made = await api.call("POST", "/subscriptions", json={"topic": "t"})
        assert made.status == 201
        new_id = made.body["id"]
        assert len(new_id) == 32
        assert int(new_id, 16) >= 0
        assert made.body["group"] == new_id
        for taken in (new_id, "audit"):
            again = await api.call("POST", "/subscriptions", json={"id": taken, "topic": "t"})
            assert again.status == 409
            assert again.body["type"] == "LifecycleError"


async def test_config_subscriptions_are_listed_with_stats_and_cannot_be_deleted(
    serve: Any,
) -> None:
    """A config file subscription is listed with origin config, id = its name, and the
    mesh's stats; DELETE on it is 409 naming the config file."""
    handled.clear()
    async with serve(CONFIG) as api:
        await api.mesh.publish("orders", Event(type="t", source="/s", id="o1"))
        with anyio.fail_after(10):
            while handled != ["o1"]:
                await anyio.sleep(0.01)
            resource = (await api.call("GET", "/subscriptions/audit")).body
            while resource["stats"]["delivered"] != 1:
                await anyio.sleep(0.01)
                resource = (await api.call("GET", "/subscriptions/audit")).body
        assert resource["origin"] == "config"
        assert (resource["topic"], resource["group"], resource["protocol"]) == (
            "orders",
            "audit",
            "handler",
        )
        await api.call("POST", "/subscriptions", json={"id": "mine", "topic": "t"})
        listed = (await api.call("GET", "/subscriptions")).body["subscriptions"]
        assert [(s["id"], s["origin"]) for s in listed] == [("audit", "config"), ("mine", "api")]
        refused = await api.call("DELETE", "/subscriptions/audit")
        assert refused.status == 409
        assert "config file" in refused.body["detail"]


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({}, "topic"),
        ({"topic": "t", "bogus": 1}, "bogus"),
        ({"topic": "t", "id": "a/b"}, "id"),
        ({"topic": "t", "protocol": "MQTT"}, "protocol"),
        ({"topic": "t", "protocol": "HTTP"}, "sink"),
        ({"topic": "t", "delivery": {"max_attempts": 0}}, "delivery"),
        ({"topic": "t", "delivery": {"backoff": {"initial": "soon"}}}, "delivery.backoff.initial"),
        ({"topic": "t", "filters": [{"exact": {"type": "x"}}, {"nope": {}}]}, "filters[1]"),
        ({"topic": "t", "filter": {"sql": "type ="}}, "filter.sql"),
        ({"topic": "t", "filter": {"exact": {}}, "filters": []}, "filters"),
        ({"topic": "t", "transform": [{"frobnicate": 1}]}, "transform[0]"),
        ({"topic": "t", "ack_deadline": 0}, "ack_deadline"),
        ({"topic": "t", "sink": "http://127.0.0.1:9/", "ack_deadline": "1s"}, "ack_deadline"),
        ({"topic": "t", "protocol": "pull", "sink": "http://127.0.0.1:9/"}, "sink"),
        ({"topic": "t", "sink": "http://127.0.0.1:9/", "protocolsettings": {"x": 1}}, None),
        ({"topic": "t", "sink": "http://127.0.0.1:9/", "protocolsettings": {"mode": "b"}}, None),
        ({"topic": "t", "sink": "ftp://127.0.0.1/"}, "sink"),
        ({"topic": "t", "sink": "http://10.1.2.3:8080/hook"}, "sink"),
    ],
)
async def test_a_bad_spec_is_400_naming_the_key(
    serve: Any, spec: dict[str, Any], key: str | None
) -> None:
    """Each mistake in a subscription spec is a 400 ConfigError whose key names it, and
    nothing is created."""
    async with serve() as api:
        answer = await api.call("POST", "/subscriptions", json=spec)
        assert answer.status == 400, answer.body
        assert answer.body["type"] == "ConfigError"
        if key is None:
            assert answer.body["key"].startswith("protocolsettings.")
        else:
            assert answer.body["key"] == key
        assert (await api.call("GET", "/subscriptions")).body == {"subscriptions": []}
        assert api.mesh.subscriptions == []


async def test_a_body_that_is_not_a_json_object_is_400(serve: Any) -> None:
    """Malformed JSON and a JSON array are both 400 ConfigError."""
    async with serve() as api:
        for body in (b"{", b"[]"):
            answer = await api.call(
                "POST", "/subscriptions", data=body, headers={"Content-Type": "application/json"}
            )
            assert (answer.status, answer.body["type"]) == (400, "ConfigError")


@asynccontextmanager
async def receiver(reply: bool = False) -> AsyncIterator[tuple[str, list[web.Request], list[Any]]]:
    """A webhook receiver on 127.0.0.1: its URL, the requests it got and their events."""
    requests: list[web.Request] = []
    events: list[Any] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        requests.append(request)
        events.extend(from_http(request.headers, body))
        if reply:
            headers, data = to_structured(
                Event(type="reply", source="/receiver", id=f"re-{events[-1].id}")
            )
            return web.Response(status=200, body=data, headers=headers)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/hook", requests, events
    finally:
        await runner.cleanup()


async def test_a_push_subscription_posts_events_to_its_sink(serve: Any) -> None:
    """An HTTP subscription made through the API POSTs each matching event to its sink in
    the chosen mode with the extra headers, counts it delivered, and stops on DELETE."""
    async with receiver() as (url, requests, events), serve() as api:
        created = await api.call(
            "POST",
            "/subscriptions",
            json={
                "id": "push",
                "topic": "orders",
                "sink": url,
                "protocolsettings": {"mode": "structured", "headers": {"X-Token": "s3cret"}},
                "filters": [{"prefix": {"type": "com.keep."}}],
            },
        )
        assert created.status == 201, created.body
        assert created.body["protocol"] == "HTTP"
        assert created.body["sink"] == url
        assert created.body["protocolsettings"] == {
            "headers": {"X-Token": "***"},  # header values are never shown
            "mode": "structured",
            "timeout": 10.0,
            "max_batch": 100,
            "batch_window": 0.01,
        }
        await api.mesh.publish("orders", Event(type="com.drop.x", source="/s", id="d"))
        await api.mesh.publish("orders", Event(type="com.keep.x", source="/s", id="k", data=7))
        with anyio.fail_after(10):
            while not events:
                await anyio.sleep(0.01)
            stats = (await api.call("GET", "/subscriptions/push")).body["stats"]
            while stats["delivered"] != 1:
                await anyio.sleep(0.01)
                stats = (await api.call("GET", "/subscriptions/push")).body["stats"]
        assert [(e.id, e.data) for e in events] == [("k", 7)]
        assert requests[0].headers["Content-Type"] == "application/cloudevents+json"
        assert requests[0].headers["X-Token"] == "s3cret"
        assert stats["filtered"] == 1

        assert (await api.call("DELETE", "/subscriptions/push")).status == 204
        assert api.mesh.subscriptions == []


async def test_a_push_subscription_publishes_webhook_replies_to_reply_to(serve: Any) -> None:
    """A webhook's CloudEvent answer is published to the subscription's reply_to topic."""
    async with receiver(reply=True) as (url, _, events), serve() as api:
        created = await api.call(
            "POST",
            "/subscriptions",
            json={"id": "push", "topic": "orders", "sink": url, "reply_to": "replies"},
        )
        assert created.body["reply_to"] == "replies"
        await api.mesh.publish("orders", Event(type="t", source="/s", id="q"))
        (reply,) = await api.read_topic("replies", 1)
    assert [e.id for e in events] == ["q"]
    assert (reply.id, reply.type) == ("re-q", "reply")
