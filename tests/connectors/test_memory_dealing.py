"""The memory connector deals a batch without keys round robin in one go (a slice per
partition): the same partitions, offsets and order as publishing the events one by one."""

from __future__ import annotations

import pytest

from eventmesh import Event
from eventmesh.connectors.memory import MemoryConfig, MemoryConnector

pytestmark = [pytest.mark.anyio, pytest.mark.core]  # core: CI runs these on the core alone


def events(n: int, start: int = 0) -> list[Event]:
    return [Event(type="t", source="/s", id=str(start + i)) for i in range(n)]


async def placed(batches: list[list[Event]]) -> list[tuple[str, int, int]]:
    """(id, partition, offset) of every event after publishing ``batches``."""
    async with MemoryConnector(MemoryConfig(partitions=3)) as connector:
        for batch in batches:
            await connector.publish("t", batch)
        stored = await connector.read("t", limit=1_000)
    return sorted((s.event.id, s.partition, s.offset) for s in stored)


@pytest.mark.parametrize("sizes", [[1], [2, 5], [3, 3, 1], [7, 1, 4, 9]])
async def test_a_batch_lands_where_the_events_one_by_one_would(sizes: list[int]) -> None:
    """Batches of keyless events take the partitions and offsets that publishing each
    event alone gives, and the round robin goes on from batch to batch."""
    batches, singles, start = [], [], 0
    for size in sizes:
        batch = events(size, start)
        batches.append(batch)
        singles += [[event] for event in batch]
        start += size
    assert await placed(batches) == await placed(singles)


async def test_a_batch_with_a_key_keeps_keyed_events_together() -> None:
    """A batch with some keyed events routes each keyed one by its key, in order."""
    keyed = [
        Event(type="t", source="/s", id=f"k{i}", extensions={"partitionkey": "a"}) for i in range(4)
    ]
    where = await placed([events(2) + keyed])
    partitions = {p for i, p, _ in where if i.startswith("k")}
    assert len(partitions) == 1
    offsets = [o for i, _, o in where if i.startswith("k")]
    assert offsets == sorted(offsets)
