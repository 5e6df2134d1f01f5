"""Browsing a Kafka topic without a consumer group (``KafkaConnector.read``).

Each call makes a short-lived consumer with no ``group_id``: it joins no group and
commits nothing, so no group's position moves. It assigns itself every partition of the
topic, seeks each to its start (the first record at or after ``since`` by
``offsets_for_times``, then past the cursor's offset), reads up to ``limit`` records of
each partition, but never past the end offsets it saw when it started, and stops. The
page is the first ``limit`` of those, merged by record timestamp (each partition's
records stay in offset order). A call takes at most ``READ_TIMEOUT`` seconds: setting up
past that is a ``SubscribeError``, reading past it returns what was read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, TopicPartition

from eventmesh.bindings.kafka import from_message
from eventmesh.connectors.base import StoredEvent
from eventmesh.connectors.browse import READ_TIMEOUT, check_read, merge_by_time
from eventmesh.errors import SubscribeError
from eventmesh.event import Event
from eventmesh_kafka._errors import (
    CLIENT_ERRORS,
    read_past_unreadable,
    record_time,
    tolerated,
    translated,
    unreadable,
    unreadable_event,
    wrap_record,
)

__all__ = ["read_topic"]

log = logging.getLogger(__name__)

_POLL_MS = 500
"""The longest one fetch waits for records that the end offsets say are there."""


async def read_topic(
    options: Mapping[str, Any],
    admin: Any,
    topic: str,
    *,
    since: datetime | None,
    after: Mapping[int, int] | None,
    limit: int,
    timeout: float = READ_TIMEOUT,
) -> list[StoredEvent]:
    """Up to ``limit`` records of ``topic`` as stored events (module docstring);
    ``options`` are the connector's client settings, ``admin`` its admin client."""
    limit = check_read(topic, limit, after)
    where = f"browsing Kafka topic {topic!r}"
    with translated(SubscribeError, where, setup=True):
        client = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **options
        )
    try:
        with anyio.move_on_after(timeout) as scope:
            with translated(SubscribeError, where):
                await client.start()
                plan = await _plan(client, admin, topic, since, after or {})
        if scope.cancelled_caught:
            raise SubscribeError(f"{where}: the broker did not answer within {timeout:g}s")
        runs: dict[int, list[StoredEvent]] = {tp.partition: [] for tp in plan}
        if plan:
            with anyio.move_on_after(timeout), translated(SubscribeError, where):
                await _fetch(client, topic, plan, runs, limit)
        return merge_by_time(runs.values(), limit)
    finally:
        with anyio.CancelScope(shield=True) as shield:
            shield.deadline = anyio.current_time() + timeout
            with tolerated(f"closing the consumer {where}"):
                await client.stop()


async def _plan(
    client: Any, admin: Any, topic: str, since: datetime | None, after: Mapping[int, int]
) -> dict[Any, int]:
    """Assign the partitions that have something to read, each at its start; return
    each one's end offset."""
    # Asked of every topic first: a metadata request naming a missing topic creates it
    # on a broker that auto-creates topics.
    if topic not in await client.topics():
        return {}
    described = await admin.describe_topics([topic])
    partitions = {
        part["partition"]
        for found in described
        if found["topic"] == topic and found["error_code"] == 0
        for part in found["partitions"]
    }
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        return {}
    client.assign(tps)
    starts = dict(await client.beginning_offsets(tps))
    ends = dict(await client.end_offsets(tps))
    if since is not None:
        stamp = max(0, int(since.timestamp() * 1000))
        found = await client.offsets_for_times(dict.fromkeys(tps, stamp))
        for tp in tps:
            hit = found.get(tp)
            starts[tp] = max(starts[tp], hit.offset if hit is not None else ends[tp])
    for tp in tps:
        if tp.partition in after:
            starts[tp] = max(starts[tp], after[tp.partition] + 1)
    plan = {tp: ends[tp] for tp in tps if starts[tp] < ends[tp]}
    if not plan:
        return plan  # (aiokafka's stop() hangs after an assign of no partitions)
    client.assign(list(plan))
    for tp in plan:
        client.seek(tp, starts[tp])
    return plan


async def _fetch(
    client: Any, topic: str, plan: dict[Any, int], runs: dict[int, list[StoredEvent]], limit: int
) -> None:
    """Read each planned partition until it has ``limit`` records or reaches its end; a
    record the client cannot decode is read as an unreadable one (read_past_unreadable)."""
    pending = dict(plan)
    nexts = {tp: int(await client.position(tp)) for tp in plan}
    while pending:
        bad: dict[Any, tuple[int, Exception]] = {}
        try:
            batches = await client.getmany(*pending, timeout_ms=_POLL_MS, max_records=limit)
        except CLIENT_ERRORS:
            raise
        except Exception:  # a record aiokafka cannot decode
            batches, bad = await read_past_unreadable(
                client, {tp: nexts[tp] for tp in pending}, timeout_ms=_POLL_MS, max_records=limit
            )
        for tp, records in batches.items():
            run = runs[tp.partition]
            end = pending.get(tp)
            if end is None:
                continue
            for record in records:
                if record.offset >= end or len(run) >= limit:
                    break
                run.append(_stored(topic, record))
                nexts[tp] = record.offset + 1
        for tp, (offset, exc) in bad.items():
            run = runs[tp.partition]
            if offset < pending.get(tp, 0) and len(run) < limit:
                event = unreadable_event(topic, tp.partition, offset, unreadable(exc))
                run.append(StoredEvent(event, tp.partition, offset, None))
            nexts[tp] = offset + 1
        for tp in list(pending):
            if len(runs[tp.partition]) >= limit or await client.position(tp) >= pending[tp]:
                del pending[tp]
                client.pause(tp)


def _stored(topic: str, record: Any) -> StoredEvent:
    stamp = record_time(record.timestamp)
    position = {"topic": topic, "partition": record.partition, "offset": record.offset}
    event: Event
    try:
        event = from_message(record.key, record.value, record.headers, timestamp=stamp, **position)
    except Exception as exc:  # no record is left out: it is read wrapped
        event = wrap_record(record, stamp, exc, level=logging.DEBUG)
    return StoredEvent(event, record.partition, record.offset, stamp)
