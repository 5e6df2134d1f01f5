"""Dead-letter replay records kept in the local store do not grow for ever: a replay
forgets those of dead letters retention removed, and keeps the newest
MAX_MEMORY_RECORDS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from eventmesh import deadletters
from eventmesh.connectors.local import LocalConfig, LocalConnector
from eventmesh.event import Event

pytestmark = pytest.mark.anyio


def _dead(count: int, start: int = 0, pad: int = 0) -> list[Event]:
    return [
        Event(
            type="t",
            source="/s",
            id=f"e{i}",
            data={"pad": "x" * pad},
            extensions={"deadlettertopic": "orders", "deadletterreason": "failed"},
        )
        for i in range(start, start + count)
    ]


async def _offsets(connector: LocalConnector) -> set[int]:
    """The dead-letter offsets the store holds replay records of."""
    store = connector.state(deadletters.BUCKET)
    assert store is not None
    return {int(key.split(".")[2]) for key in await store.load()}


def _publisher(connector: LocalConnector) -> deadletters.Publish:
    async def publish(topic: str, events: Sequence[Event], keys: Sequence[str]) -> None:
        await connector.publish(topic, events)

    return publish


async def test_a_replay_forgets_the_records_of_dead_letters_retention_removed(
    tmp_path: Path,
) -> None:
    """Once retention removed replayed dead letters, the next replay deletes their
    records and keeps those of the dead letters still retained."""
    config = LocalConfig(data_dir=str(tmp_path), partitions=1, max_bytes=20_000)
    async with LocalConnector(config) as connector:
        publish = _publisher(connector)
        await connector.publish("orders.dlq", _dead(5))
        everything = deadletters.selection(limit=10_000)
        first = await deadletters.replay(connector, "orders.dlq", everything, publish=publish)
        assert first.replayed == 5
        assert await _offsets(connector) == {0, 1, 2, 3, 4}
        for i in range(5, 405, 50):  # past max_bytes: the oldest go
            await connector.publish("orders.dlq", _dead(50, start=i, pad=100))

        async def oldest() -> int:
            return (await connector.read("orders.dlq", limit=1))[0].offset

        with anyio.fail_after(15):
            while await oldest() < 5:
                await anyio.sleep(0.05)
        kept = await oldest()
        again = await deadletters.replay(connector, "orders.dlq", everything, publish=publish)
        assert again.replayed == 405 - kept
        assert await _offsets(connector) == set(range(kept, 405))


async def test_replay_records_in_the_store_keep_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_MEMORY_RECORDS the oldest records in the store go, as in memory."""
    monkeypatch.setattr(deadletters, "MAX_MEMORY_RECORDS", 6)
    async with LocalConnector(LocalConfig(data_dir=str(tmp_path), partitions=1)) as connector:
        publish = _publisher(connector)
        for start in (0, 4):
            await connector.publish("orders.dlq", _dead(4, start=start))
            result = await deadletters.replay(
                connector, "orders.dlq", deadletters.selection(limit=4), publish=publish
            )
            assert result.replayed == 4
        assert await _offsets(connector) == {2, 3, 4, 5, 6, 7}
