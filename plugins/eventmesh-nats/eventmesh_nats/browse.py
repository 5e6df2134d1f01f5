"""Browsing a JetStream topic without a group (``NatsConnector.read``).

Each call makes an ephemeral pull consumer on the topic's stream, filtered to its
subject, that acks nothing (``AckPolicy.NONE``) and starts at the cursor's sequence + 1
(``BY_START_SEQUENCE``), at ``since`` (``BY_START_TIME``) or at the first message; it
reads until ``limit`` messages or until the consumer has nothing pending, then deletes
the consumer (the server also drops it after ``_INACTIVE`` seconds, should the delete be
lost). No group's durable consumer is touched. A stream has one partition (0); an
event's offset is its stream sequence. A missing stream reads empty and is not created.
A call takes at most ``READ_TIMEOUT`` seconds: setting up past that is a
``SubscribeError``, reading past it returns what was read.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventmesh.connectors.base import StoredEvent
from eventmesh.connectors.browse import READ_TIMEOUT, check_read
from eventmesh.errors import RejectedError, SubscribeError
from eventmesh_nats._errors import NATS_ERRORS, TIMEOUTS, is_not_found, tolerated, translated

if TYPE_CHECKING:
    from eventmesh_nats.connector import NatsConnector

__all__ = ["read_stream"]

_INACTIVE = 30.0
"""Seconds after which the server deletes a browsing consumer left behind."""


async def read_stream(
    connector: NatsConnector,
    topic: str,
    *,
    since: datetime | None,
    after: Mapping[int, int] | None,
    limit: int,
    timeout: float = READ_TIMEOUT,
) -> list[StoredEvent]:
    """Up to ``limit`` messages of ``topic`` as stored events (module docstring)."""
    limit = check_read(topic, limit, after)
    if connector.config.mode == "core":
        raise RejectedError(
            f"connector {connector.name!r} is in core mode, which stores nothing to browse; "
            "use JetStream mode (mode: jetstream) for topics you want to look at or replay"
        )
    subject, stream = connector.route(topic, RejectedError, keep=False)
    js = connector.js
    where = f"browsing topic {topic!r} (stream {stream!r})"
    name = f"browse_{uuid.uuid4().hex}"
    config = ConsumerConfig(
        name=name,
        ack_policy=AckPolicy.NONE,
        filter_subject=subject,
        inactive_threshold=_INACTIVE,
        mem_storage=True,
        num_replicas=1,
    )
    cursor = (after or {}).get(0)
    if cursor is not None:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = max(cursor + 1, 1)
    elif since is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = since
    else:
        config.deliver_policy = DeliverPolicy.ALL
    out: list[StoredEvent] = []
    with anyio.move_on_after(timeout) as scope:
        with translated(SubscribeError, where):
            try:
                await js.stream_info(stream)
            except NATS_ERRORS as exc:
                if is_not_found(exc):
                    return out
                raise
            info = await js.add_consumer(stream, config)
            psub = await js.pull_subscribe_bind(stream=stream, name=name)
    if scope.cancelled_caught:
        raise SubscribeError(f"{where}: the server did not answer within {timeout:g}s")
    try:
        with anyio.move_on_after(timeout), translated(SubscribeError, where):
            pending = info.num_pending
            stamp = None if since is None else since.timestamp()
            while pending and len(out) < limit:
                try:
                    msgs = await psub.fetch(min(limit - len(out), pending), timeout=timeout)
                except TIMEOUTS:
                    break
                for msg in msgs:
                    stored = _stored(connector, msg)
                    if stamp is None or stored.timestamp is None or stored.timestamp >= stamp:
                        out.append(stored)
                pending = msgs[-1].metadata.num_pending if msgs else 0
    finally:
        with anyio.CancelScope(shield=True) as shield:
            shield.deadline = anyio.current_time() + timeout
            with tolerated(f"{where}: unsubscribing"):
                await psub.unsubscribe()
            with tolerated(f"{where}: deleting the browsing consumer"):
                await js.delete_consumer(stream, name)
    return out[:limit]


def _stored(connector: NatsConnector, msg: Msg) -> StoredEvent:
    meta = msg.metadata
    stamp = meta.timestamp.timestamp()
    event = connector.decode(msg, meta.stream, meta.sequence.stream, stamp)
    return StoredEvent(event, 0, meta.sequence.stream, stamp)
