"""One request answered through a mesh's reply inbox, for checking request-reply over
a connector (the Kafka and NATS plugins' tests use it); it returns the inbox's name, so
that a test can look at the backend once the mesh closed. See docs/sdk.md,
'Request-reply'.

::

    async with Mesh(connectors={"default": MyConnector(config)}) as mesh:
        inbox = await answer_one_request(mesh, "a-fresh-topic")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventmesh.event import Event

if TYPE_CHECKING:
    from eventmesh.mesh import Mesh

__all__ = ["answer_one_request"]


async def answer_one_request(mesh: Mesh, topic: str, *, timeout: float = 30.0) -> str:
    """Subscribe a responder to ``topic`` (group ``responder``, from the earliest event),
    send it one request and check the reply; return the reply inbox the request named."""
    inboxes: list[str] = []

    async def answer(event: Event) -> Event:
        inboxes.append(str(event.extensions["replyto"]))
        return Event(type="answer", source="/responder", data={"twice": 2 * event.data["n"]})

    await mesh.subscribe(topic, "responder", handler=answer, start="earliest")
    reply = await mesh.request(
        topic, Event(type="ask", source="/asker", data={"n": 21}), timeout=timeout
    )
    assert reply.data == {"twice": 42}, reply
    assert len(inboxes) == 1, f"the responder saw {len(inboxes)} requests, not 1"
    return inboxes[0]
