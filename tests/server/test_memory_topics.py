"""The sidecar and the memory connector's retention: the admin API reports what a topic
retains and what its limits released (``GET /topics``, eventmesh_events_released_total),
and deleting an API subscription deletes the group only it could name."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import msgspec
import pytest

from eventmesh import Event
from eventmesh.connectors.memory import MemoryConnector
from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio


async def get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200
        body = await response.read()
        return msgspec.json.decode(body) if response.content_type.endswith("json") else body


async def test_topics_and_metrics_report_what_drop_oldest_released() -> None:
    """A group that stopped reading a drop_oldest topic: /topics says 10 retained and 5
    released, /metrics counts the 5 under the topic's label."""
    config = {
        "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
        "connectors": {"default": {"type": "memory", "max_events": 10, "when_full": "drop_oldest"}},
    }
    async with Sidecar(config) as sidecar, aiohttp.ClientSession() as session:
        mesh = sidecar.mesh
        async with mesh.subscribe("orders", "billing"):
            pass
        for i in range(15):
            await mesh.publish("orders", Event(type="t", source="/s", data=i))
        await mesh.publish("quiet", Event(type="t", source="/s"))
        body = await get(session, sidecar.admin_url + "/topics")
        topics = {t["name"]: t for t in body["topics"]}
        assert topics["orders"] == {
            "name": "orders",
            "connector": "default",
            "retained": 10,
            "released": 5,
        }
        assert topics["quiet"]["released"] == 0
        text = (await get(session, sidecar.admin_url + "/metrics")).decode()
        assert (
            'eventmesh_events_released_total{connector="default",topic="orders"} 5.0'
            in text.splitlines()
        )
        assert 'topic="quiet"' not in "".join(
            line for line in text.splitlines() if line.startswith("eventmesh_events_released")
        )


async def test_deleting_an_api_subscription_without_a_group_deletes_its_group(
    serve: Any,
) -> None:
    """DELETE of a subscription whose group was named after its generated id frees the
    events only that group needed; one with a group of its own keeps it for a comeback."""
    with anyio.fail_after(10):
        async with serve() as api:
            memory = api.mesh.connectors["default"]
            assert isinstance(memory, MemoryConnector)
            anonymous = (await api.call("POST", "/subscriptions", json={"topic": "a"})).body
            named = {"topic": "b", "group": "billing"}
            kept = (await api.call("POST", "/subscriptions", json=named)).body
            for topic in ("a", "b"):
                await api.mesh.publish(topic, [Event(type="t", source="/s") for _ in range(3)])
            for sub in (anonymous, kept):
                assert (await api.call("DELETE", f"/subscriptions/{sub['id']}")).status == 204
            held = memory.topic_stats()
            assert (held["a"].groups, held["a"].held) == (0, 0)
            assert (held["b"].groups, held["b"].retained) == (1, 3)
            await api.registry.close()
