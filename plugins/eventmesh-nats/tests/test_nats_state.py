"""The mesh's state on NATS (a JetStream KV bucket per bucket), and the sidecar's
subscriptions kept there: they survive kill -9 and are shared by two sidecars."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import nats
import pytest

from eventmesh.server.sidecar import Sidecar
from eventmesh.testing import eventually
from eventmesh.testing._sidecars import (
    replicas_share_subscriptions,
    sidecar_config,
    subscription_survives_kill,
)
from eventmesh_nats import NatsConfig, NatsConnector

pytestmark = [pytest.mark.nats, pytest.mark.anyio]


@pytest.fixture
def settings(nats_url: str, stream_prefix: str) -> dict[str, Any]:
    """A NATS connector in a namespace of its own (the session deletes its streams and
    KV buckets)."""
    prefix = f"{stream_prefix}{uuid.uuid4().hex[:6]}_"
    return {
        "type": "nats",
        "servers": [nats_url],
        "subject_prefix": f"{prefix.lower()}.",
        "stream": {"name_prefix": prefix},
    }


async def test_state_is_a_kv_bucket_shared_by_connectors(settings: dict[str, Any]) -> None:
    """What one connector puts and deletes, another loads and watches."""
    options = {k: v for k, v in settings.items() if k != "type"}
    config = msgspec.convert(options, NatsConfig)
    async with NatsConnector(config) as one, NatsConnector(config) as two:
        mine, theirs = one.state("things"), two.state("things")
        assert mine is not None
        assert theirs is not None
        assert await mine.load() == {}
        await mine.put("a", b"1")
        await mine.put("b", b"2")
        await mine.put("a", b"3")
        await mine.delete("b")
        assert await theirs.load() == {"a": b"3"}

        seen: dict[str, bytes | None] = {}

        async def follow() -> None:
            async for key, value in theirs.watch():
                seen[key] = value

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await mine.put("c", b"4")
            await mine.delete("a")
            await eventually(
                lambda: seen.get("c") == b"4" and "a" in seen and seen["a"] is None,
                what="both changes",
            )
            tg.cancel_scope.cancel()


async def test_core_mode_keeps_no_state(nats_url: str) -> None:
    """Core NATS stores nothing, so the mesh keeps its state in memory."""
    async with NatsConnector(NatsConfig(servers=[nats_url], mode="core")) as connector:
        assert connector.state("things") is None


async def test_subscription_survives_kill_9_on_nats(
    settings: dict[str, Any], tmp_path: Path
) -> None:
    """A webhook subscription made over HTTP is served again after kill -9 and a restart,
    and every accepted event reaches the sink."""
    config = sidecar_config({"default": settings})
    await subscription_survives_kill(tmp_path, config, f"kept-{uuid.uuid4().hex[:12]}")


async def test_two_sidecars_share_a_subscription_on_nats(
    settings: dict[str, Any], tmp_path: Path
) -> None:
    """Created on one sidecar, listed on the other; each event reaches the webhook once."""
    config = sidecar_config({"default": settings})
    await replicas_share_subscriptions(tmp_path, config, f"shared-{uuid.uuid4().hex[:12]}")


async def test_a_subscription_the_store_refuses_is_503_and_not_started(
    settings: dict[str, Any], nats_url: str
) -> None:
    """When the subscription cannot be stored (its KV bucket was deleted under the
    sidecar), POST answers 503 and nothing runs."""
    config = sidecar_config({"default": settings})
    config.pop("logging")
    bucket = f"KV_{settings['stream']['name_prefix']}STATE_subscriptions"
    async with Sidecar(config) as sidecar, aiohttp.ClientSession() as session:
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().delete_stream(bucket)
        finally:
            await nc.close()
        body = {"id": "refused", "topic": "orders", "sink": "http://127.0.0.1:9/hook"}
        async with session.post(f"{sidecar.http_url}/subscriptions", json=body) as response:
            assert response.status == 503, await response.text()
        async with session.get(f"{sidecar.http_url}/subscriptions") as response:
            assert (await response.json())["subscriptions"] == []
