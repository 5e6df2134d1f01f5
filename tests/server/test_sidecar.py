"""The sidecar as a whole: its three servers, the admin probes, and a graceful shutdown."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import msgspec
import pytest

import eventmesh
from eventmesh import Event
from eventmesh.bindings.http import to_binary
from eventmesh.errors import LifecycleError
from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

FREE_PORTS: dict[str, Any] = {
    "http": {"port": 0},
    "grpc": {"port": 0},
    "admin": {"port": 0},
}

started: list[str] = []
finished: list[str] = []


async def slow_handler(event: Event) -> None:
    """A configured handler that takes a while, to be caught mid-delivery by shutdown
    (long enough that the test, polling for its start on a loaded machine, still finds
    it running)."""
    started.append(event.id)
    await anyio.sleep(2)
    finished.append(event.id)


def config(**extra: Any) -> dict[str, Any]:
    return {"server": {**FREE_PORTS, "shutdown_timeout": "10s"}, **extra}


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        body = await response.read()
        if response.content_type == "application/json":
            return response.status, msgspec.json.decode(body)
        return response.status, body.decode()


async def test_admin_probes_and_listings_describe_the_running_mesh() -> None:
    """/healthz and /readyz answer 200; /connectors, /topics and /subscriptions list what
    runs, including a topic first used through the HTTP API and a configured
    subscription; /metrics counts its deliveries."""
    conf = config(
        subscriptions=[
            {
                "name": "audit",
                "topic": "orders",
                "sink": {"handler": "test_sidecar:slow_handler"},
                "start": "earliest",
            }
        ]
    )
    async with Sidecar(conf) as sidecar, aiohttp.ClientSession() as session:
        admin = sidecar.admin_url
        assert await get(session, admin + "/healthz") == (200, {"status": "ok"})
        assert (await get(session, admin + "/readyz"))[0] == 200
        status, body = await get(session, admin + "/connectors")
        assert status == 200
        assert [(c["name"], c["type"], c["open"]) for c in body["connectors"]] == [
            ("default", "memory", True)
        ]
        headers, data = to_binary(Event(type="t", source="s", id="e1", data={"n": 1}))
        async with session.post(
            sidecar.http_url + "/topics/orders/events", headers=headers, data=data
        ) as response:
            assert response.status == 202
        status, body = await get(session, admin + "/topics")
        assert ("orders", "default") in [(t["name"], t["connector"]) for t in body["topics"]]
        status, body = await get(session, admin + "/subscriptions")
        assert [s["id"] for s in body["subscriptions"]] == ["audit"]
        with anyio.fail_after(5):
            while "e1" not in finished:
                await anyio.sleep(0.02)
        status, text = await get(session, admin + "/metrics")
        assert status == 200
        assert (
            'eventmesh_events_delivered_total{connector="default",subscription="audit",'
            'topic="orders"} 1.0'
        ) in text.splitlines()


async def test_readyz_names_a_connector_that_cannot_serve() -> None:
    """When a connector stops, /readyz answers 503 and names it; /healthz stays 200."""
    async with Sidecar(config()) as sidecar, aiohttp.ClientSession() as session:
        await sidecar.mesh.connectors["default"].close()
        status, body = await get(session, sidecar.admin_url + "/readyz")
        assert status == 503
        assert body["connectors_down"] == ["default"]
        assert (await get(session, sidecar.admin_url + "/healthz"))[0] == 200


async def test_the_remote_clients_reach_the_sidecar_through_connect() -> None:
    """connect("http://...") and connect("grpc://...") publish to the same sidecar, and
    an embedded-style iteration over HTTP receives both events."""
    async with Sidecar(config()) as sidecar:
        async with eventmesh.connect(sidecar.http_url) as client:
            await client.publish("t", Event(type="via.http", source="s", id="h"))
        async with eventmesh.connect("grpc://" + sidecar.grpc_target) as client:
            await client.publish("t", Event(type="via.grpc", source="s", id="g"))
        async with eventmesh.connect(sidecar.http_url) as client:
            got = []
            async with client.subscribe("t", "g", start="earliest") as sub:
                with anyio.fail_after(10):
                    async for delivery in sub:
                        got.append(delivery.event.type)
                        await delivery.ack()
                        if len(got) == 2:
                            break
    assert got == ["via.http", "via.grpc"]


async def test_shutdown_finishes_deliveries_in_hand_and_then_refuses_work() -> None:
    """A delivery running when shutdown begins finishes before the sidecar stops, and the
    listeners are closed afterwards."""
    started.clear()
    finished.clear()
    conf = config(
        subscriptions=[
            {
                "name": "slow",
                "topic": "jobs",
                "sink": {"handler": "test_sidecar:slow_handler"},
            }
        ]
    )
    async with Sidecar(conf) as sidecar, aiohttp.ClientSession() as session:
        url = sidecar.http_url
        headers, data = to_binary(Event(type="t", source="s", id="job-1"))
        async with session.post(url + "/topics/jobs/events", headers=headers, data=data) as r:
            assert r.status == 202
        with anyio.fail_after(5):
            while "job-1" not in started:
                await anyio.sleep(0.01)
        assert finished == []
        await sidecar.close()
        assert finished == ["job-1"]
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post(url + "/topics/jobs/events", headers=headers, data=data):
                pass


async def test_a_taken_port_is_a_config_error_naming_the_key() -> None:
    """Two sidecars on one HTTP port: the second says which key to change."""
    async with Sidecar(config()) as first:
        port = int(first.http_url.rsplit(":", 1)[1])
        second = Sidecar({"server": {**FREE_PORTS, "http": {"port": port}}})
        with pytest.raises(eventmesh.ConfigError, match=r"server\.http\.port"):
            await second.__aenter__()
        with pytest.raises(LifecycleError):
            _ = second.http_url


async def test_grpc_refuses_events_and_requests_above_the_configured_sizes() -> None:
    """Over gRPC an event above server.grpc.max_event_size, or a request above
    max_request_size, fails with EventTooLargeError and stores nothing of its call."""
    limits = {"port": 0, "max_event_size": 2_000, "max_request_size": 20_000}
    conf: dict[str, Any] = {"server": {**FREE_PORTS, "grpc": limits}}
    small = Event(type="t", source="/s", data="x" * 100)
    big = Event(type="t", source="/s", data="x" * 3_000)
    async with Sidecar(conf) as sidecar, eventmesh.connect(f"grpc://{sidecar.grpc_target}") as c:
        with pytest.raises(eventmesh.EventTooLargeError, match="max_event_size"):
            await c.publish("t", big)
        with pytest.raises(eventmesh.EventTooLargeError, match="event 1 of the batch"):
            await c.publish("t", [small, big])
        many = [Event(type="t", source="/s", data="x" * 1_000) for _ in range(30)]
        with pytest.raises(eventmesh.EventTooLargeError):
            await c.publish("t", many)  # each event fits; the request does not
        marker = Event(type="t", source="/s", id="marker")
        await c.publish("t", marker)
        async with sidecar.mesh.subscribe("t", "reader", start="earliest") as sub:
            with anyio.fail_after(5):
                async for delivery in sub:
                    assert delivery.event.id == "marker"  # the first stored: nothing before it
                    break
