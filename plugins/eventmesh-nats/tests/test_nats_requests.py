"""Request-reply over NATS JetStream: the reply comes back through the mesh's inbox
topic, whose stream is deleted when the mesh closes."""

from __future__ import annotations

import anyio
import nats
import pytest
from nats.js.errors import NotFoundError

from eventmesh import Mesh
from eventmesh.testing.requests import answer_one_request
from eventmesh_nats import NatsConfig, NatsConnector, StreamSettings

pytestmark = [pytest.mark.nats, pytest.mark.anyio]


async def test_a_request_is_answered_and_its_inbox_stream_deleted_when_the_mesh_closes(
    nats_url: str, stream_prefix: str
) -> None:
    """A handler answers a request; the inbox's stream exists while the mesh runs and
    is gone once it closed, so the server does not keep a stream per mesh that ever
    made a request."""
    config = NatsConfig(
        servers=[nats_url],
        subject_prefix=f"{stream_prefix.lower()}.",
        stream=StreamSettings(name_prefix=stream_prefix),
    )
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        with anyio.fail_after(60):
            async with Mesh(connectors={"default": NatsConnector(config)}) as mesh:
                inbox = await answer_one_request(mesh, f"requests.{stream_prefix.lower()}")
                stream = config.stream_for(inbox)
                info = await js.stream_info(stream)
                assert info.config.subjects == [config.subject_for(inbox)]
            with pytest.raises(NotFoundError):
                await js.stream_info(stream)
    finally:
        await nc.close()
