"""Request-reply over Kafka: the reply comes back through the mesh's inbox topic, and
the inbox is deleted from the broker when the mesh closes."""

from __future__ import annotations

import anyio
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from eventmesh import Mesh
from eventmesh.testing import eventually
from eventmesh.testing.requests import answer_one_request
from eventmesh_kafka import KafkaConfig, KafkaConnector

pytestmark = pytest.mark.anyio


async def test_a_request_is_answered_and_its_inbox_deleted_when_the_mesh_closes(
    kafka_config: KafkaConfig, kafka_bootstrap: str, topic: str
) -> None:
    """A handler on the request topic answers; the reply reaches request() through the
    inbox (a topic of its own on the broker), which is gone once the mesh closed, so a
    broker does not keep a topic for every mesh that ever made a request."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        with anyio.fail_after(120):
            async with Mesh(connectors={"default": KafkaConnector(kafka_config)}) as mesh:
                inbox = await answer_one_request(mesh, topic, timeout=60)
                assert inbox in await admin.list_topics()

            async def deleted() -> bool:
                return inbox not in await admin.list_topics()

            await eventually(deleted, timeout=30, what=f"inbox topic {inbox} deleted")
    finally:
        await admin.close()
