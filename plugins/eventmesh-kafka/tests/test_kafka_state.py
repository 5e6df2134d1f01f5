"""The mesh's state on Kafka (a compacted topic per bucket), and the sidecar's
subscriptions kept there: they survive kill -9 and are shared by two sidecars."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from eventmesh.testing import eventually
from eventmesh.testing._sidecars import (
    replicas_share_subscriptions,
    sidecar_config,
    subscription_survives_kill,
)
from eventmesh_kafka import KafkaConfig, KafkaConnector

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]


def kafka_settings(bootstrap: str) -> dict[str, Any]:
    """A Kafka connector of its own state topics (no other test sees them)."""
    return {
        "type": "kafka",
        "bootstrap_servers": bootstrap,
        "partitions": 4,
        "request_timeout_ms": 10_000,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 300,
        "state_topic_prefix": f"test-state-{uuid.uuid4().hex[:8]}.",
    }


async def test_state_is_a_compacted_topic_shared_by_connectors(kafka_bootstrap: str) -> None:
    """What one connector puts and deletes, another loads and watches; the topic is
    compacted."""
    settings = kafka_settings(kafka_bootstrap)
    settings.pop("type")
    config = KafkaConfig(**settings)
    async with KafkaConnector(config) as one, KafkaConnector(config) as two:
        mine, theirs = one.state("things"), two.state("things")
        assert await mine.load() == {}
        await mine.put("a", b"1")
        await mine.put("b", b"2")
        await mine.put("a", b"3")
        await mine.delete("b")
        await mine.delete("never")
        assert await theirs.load() == {"a": b"3"}

        seen: dict[str, bytes | None] = {}

        async def follow() -> None:
            async for key, value in theirs.watch():
                seen[key] = value

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await mine.put("c", b"4")
            await mine.delete("a")
            await eventually(lambda: seen == {"c": b"4", "a": None}, what="both changes")
            tg.cancel_scope.cancel()

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        topic = f"{config.state_topic_prefix}things"
        resource = ConfigResource(ConfigResourceType.TOPIC, topic)
        described = await admin.describe_configs([resource])
        entries = {e[0]: e[1] for e in described[0].resources[0][4]}
        assert entries["cleanup.policy"] == "compact"
    finally:
        await admin.close()


async def test_subscription_survives_kill_9_on_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A webhook subscription made over HTTP is served again after kill -9 and a restart,
    and every accepted event reaches the sink."""
    config = sidecar_config({"default": kafka_settings(kafka_bootstrap)})
    await subscription_survives_kill(tmp_path, config, f"test-kept-{uuid.uuid4().hex[:12]}")


async def test_two_sidecars_share_a_subscription_on_kafka(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Created on one sidecar, listed on the other; each event reaches the webhook once."""
    config = sidecar_config({"default": kafka_settings(kafka_bootstrap)})
    await replicas_share_subscriptions(tmp_path, config, f"test-shared-{uuid.uuid4().hex[:12]}")


async def test_a_state_topic_that_is_not_compacted_is_warned_of(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A state topic made without compaction (by hand, or by the broker's auto-creation)
    is used, with a warning that retention would delete what it holds."""
    settings = kafka_settings(kafka_bootstrap)
    settings.pop("type")
    config = KafkaConfig(**settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{config.state_topic_prefix}things", 1, 1)])
    finally:
        await admin.close()
    async with KafkaConnector(config) as connector:
        await connector.state("things").put("a", b"1")
        assert await connector.state("things").load() == {"a": b"1"}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("cleanup.policy=delete" in m and "compact" in m for m in warned), warned
