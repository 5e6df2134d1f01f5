"""What bounds the local connector and what it refuses alone: the memory its tails hold
(in events and bytes, none for a topic no group reads), the most topics it numbers,
events or state keys it cannot store, read()'s page, a deleted group's late acks, the
modes of its files, and how far a group runs ahead of its commit."""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from eventmesh.connectors import _local_group, _local_jobs, _sqlite
from eventmesh.connectors.base import Delivery
from eventmesh.connectors.browse import MAX_READ
from eventmesh.connectors.local import LocalConfig, LocalConnector
from eventmesh.errors import EventValidationError, RejectedError
from eventmesh.event import Event
from eventmesh.testing import collect

pytestmark = pytest.mark.anyio


def _events(count: int, *, pad: int = 0, start: int = 0) -> list[Event]:
    return [
        Event(type="t", source="/local", data={"n": i, "pad": "x" * pad})
        for i in range(start, start + count)
    ]


def _held(connector: LocalConnector, topic: str) -> tuple[int, int]:
    """The events a topic's in-memory tails hold, and the characters of their padding."""
    parts = connector._topics[topic].parts
    events = [e for part in parts for e in part.events]
    return len(events), sum(len(e.data["pad"]) for e in events)


class _Hold(_sqlite.Job):
    """A job that keeps the writer busy until released, so that the jobs submitted
    meanwhile are committed together, in the writer's next batch."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, writer: _sqlite.Writer) -> None:
        self.entered.set()
        self.release.wait(10)


async def _in_one_commit(connector: LocalConnector, *calls: Any) -> list[object]:
    """Run ``calls`` (coroutine functions) so that all they submit to the writer is in
    one commit; each one's result or exception."""
    writer = connector._writer
    assert writer is not None
    hold = _Hold()
    writer.submit(hold)
    await anyio.to_thread.run_sync(hold.entered.wait, 10)
    results: list[object] = [None] * len(calls)

    async def run(i: int) -> None:
        try:
            results[i] = await calls[i]()
        except Exception as exc:
            results[i] = exc

    try:
        async with anyio.create_task_group() as tg:
            for i in range(len(calls)):
                tg.start_soon(run, i)
            await anyio.wait_all_tasks_blocked()  # each waits for its commit, or failed
            hold.release.set()
    finally:
        hold.release.set()
    return results


async def test_a_topic_no_group_reads_holds_no_events_in_memory(tmp_path: Path) -> None:
    """Events published to a topic without a group are not kept in memory; a group that
    joins later reads every one of them back from disk."""
    async with LocalConnector(LocalConfig(data_dir=str(tmp_path))) as connector:
        for i in range(0, 200, 50):
            await connector.publish("t", _events(50, pad=1000, start=i))
        assert _held(connector, "t") == (0, 0)
        async with connector.subscribe("t", "late", start="earliest") as consumer:
            got = await collect(consumer, 200, timeout=10)
    assert sorted(d.event.data["n"] for d in got) == list(range(200))


async def test_the_tail_is_bounded_in_bytes_and_the_rest_is_read_from_disk(
    tmp_path: Path,
) -> None:
    """Past cache_bytes, a topic whose group does not keep up holds at most that many
    bytes of events in memory, whatever cache_events allows; its consumer still gets
    every event, in order."""
    config = LocalConfig(
        data_dir=str(tmp_path), partitions=1, cache_events=100_000, cache_bytes=64 * 1024
    )
    async with (
        LocalConnector(config) as connector,
        connector.subscribe("t", "slow", start="earliest") as consumer,
    ):
        for i in range(0, 100, 10):
            await connector.publish("t", _events(10, pad=4096, start=i))
        count, chars = _held(connector, "t")
        assert 0 < count < 100
        assert chars <= 64 * 1024
        got = await collect(consumer, 100, timeout=10)
    assert [d.event.data["n"] for d in got] == list(range(100))


async def test_a_new_topic_past_the_most_topics_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the store's most topics, a publish to a new topic is refused, saying what to do,
    and publishes to existing topics committed with it are stored; one refused later
    is refused before reaching the writer."""
    monkeypatch.setattr(_sqlite, "MAX_TOPICS", 3)
    monkeypatch.setattr(_local_jobs, "MAX_TOPICS", 3, raising=False)  # as imported before
    async with LocalConnector(LocalConfig(data_dir=str(tmp_path), partitions=1)) as connector:
        await connector.publish("a", _events(1))
        await connector.publish("b", _events(1))

        def publish(topic: str, n: int) -> Any:
            return lambda: connector.publish(topic, _events(1, start=n))

        results = await _in_one_commit(
            connector, publish("new1", 0), publish("new2", 0), *(publish("a", n) for n in (1, 2, 3))
        )
        refused = [r for r in results[:2] if isinstance(r, RejectedError)]
        assert len(refused) == 1, results  # one of the two new topics fits, the other not
        assert "never removes a topic" in str(refused[0])
        assert "another data_dir" in str(refused[0])
        assert results[2:] == [None, None, None]
        assert sorted(s.event.data["n"] for s in await connector.read("a")) == [0, 1, 2, 3]
        with pytest.raises(RejectedError, match="holds 3 topics"):
            await connector.publish("new3", _events(1))
    async with LocalConnector(LocalConfig(data_dir=str(tmp_path), partitions=1)) as connector:
        with pytest.raises(RejectedError, match="holds 3 topics"):
            await connector.publish("new4", _events(1))
        await connector.publish("a", _events(1, start=4))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"n": 2**70}, "serialize ints"),
        ({"o": object()}, "unsupported"),
        ({"s": "\ud800"}, "surrogates"),
    ],
)
async def test_an_event_the_store_cannot_encode_is_an_event_validation_error(
    tmp_path: Path, data: object, words: str
) -> None:
    """Data the store cannot encode (an int past 64 bits, an object, a lone surrogate) is
    refused with EventValidationError naming the event and its place in the batch, and
    nothing of the batch is stored."""
    async with LocalConnector(LocalConfig(data_dir=str(tmp_path))) as connector:
        bad = Event(type="t", source="/s", id="bad", data=data)
        with pytest.raises(EventValidationError, match=words) as caught:
            await connector.publish("t", [*_events(2), bad])
        assert caught.value.index == 2
        assert caught.value.attribute == "data"
        assert "'bad'" in str(caught.value)
        with pytest.raises(EventValidationError) as caught:
            await connector.publish("t", [bad])
        assert caught.value.index is None
        assert await connector.read("t") == []


async def test_a_state_key_that_is_not_unicode_text_fails_alone(tmp_path: Path) -> None:
    """A state key (or bucket) with a lone surrogate is refused, naming it, and the
    writes committed with it are stored."""
    async with LocalConnector(LocalConfig(data_dir=str(tmp_path))) as connector:
        await connector.publish("orders", _events(1))
        store = connector.state("subscriptions")
        assert store is not None
        results = await _in_one_commit(
            connector,
            lambda: store.put("sub-\ud800", b"{}"),
            lambda: store.put("good", b"{}"),
            lambda: connector.publish("orders", _events(1, start=1)),
        )
        assert isinstance(results[0], RejectedError), results
        assert "not valid Unicode text" in str(results[0])
        assert results[1:] == [None, None]
        assert await store.load() == {"good": b"{}"}
        assert len(await connector.read("orders")) == 2
        with pytest.raises(RejectedError, match="not valid Unicode text"):
            connector.state("bucket-\udfff")


async def test_read_is_bounded_and_checks_its_arguments(tmp_path: Path) -> None:
    """read() returns at most MAX_READ events whatever the limit, and a bad limit or
    cursor is a RejectedError naming it, as on every connector."""
    async with LocalConnector(LocalConfig(data_dir=str(tmp_path), partitions=1)) as connector:
        for i in range(0, MAX_READ + 500, 500):
            await connector.publish("t", _events(500, start=i))
        assert len(await connector.read("t", limit=10**6)) == MAX_READ
        for bad in ({"after": {0: "x"}}, {"after": {"p": 1}}, {"limit": "5"}, {"limit": 0}):
            with pytest.raises(RejectedError, match=r"limit|cursor"):
                await connector.read("t", **bad)


async def test_a_late_ack_does_not_bring_a_deleted_group_back(tmp_path: Path) -> None:
    """A delivery a closed member still held, acked after delete_group, saves nothing:
    after a restart the group is new and starts from its start position."""
    config = LocalConfig(data_dir=str(tmp_path), partitions=1)
    async with LocalConnector(config) as connector:
        await connector.publish("t", _events(10))
        async with connector.subscribe("t", "g", start="earliest") as consumer:
            held: list[Delivery] = await collect(consumer, 10, timeout=10, ack=False)
        assert await connector.delete_group("t", "g")
        for delivery in held:
            await delivery.ack()
    async with (
        LocalConnector(config) as connector,
        connector.subscribe("t", "g", start="earliest") as consumer,
    ):
        got = await collect(consumer, 10, timeout=10)
    assert [d.offset for d in got] == list(range(10))


@pytest.mark.skipif(sys.platform == "win32", reason="file modes are POSIX")
async def test_the_data_directory_and_its_files_are_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new data directory is made 0700 and the store's files 0600 whatever the umask
    (they hold webhook headers); an existing directory others can read is warned about."""
    data = tmp_path / "new" / "store"
    old = os.umask(0o022)
    try:
        async with LocalConnector(LocalConfig(data_dir=str(data))) as connector:
            await connector.publish("t", _events(1))
            assert stat.S_IMODE(data.stat().st_mode) == 0o700
            files = sorted(p.name for p in data.iterdir())
            assert {"LOCK", "events.db", "events.db-wal"} <= set(files)
            for name in files:
                assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    finally:
        os.umask(old)
    assert "can be read by other users" not in caplog.text
    data.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="eventmesh.connectors.local"):
        async with LocalConnector(LocalConfig(data_dir=str(data))):
            pass
    assert "can be read by other users (mode 755)" in caplog.text
    assert f"chmod 700 {data}" in caplog.text


async def test_a_group_hands_out_a_bounded_run_past_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event held unacked stops its partition MAX_AHEAD events past the commit (what
    the group tracks stays bounded); acking it wakes a waiting fetch, and every event
    comes, in order."""
    monkeypatch.setattr(_local_group, "MAX_AHEAD", 20, raising=False)
    async with (
        LocalConnector(LocalConfig(data_dir=str(tmp_path), partitions=1)) as connector,
        connector.subscribe("t", "g", start="earliest") as consumer,
    ):
        await connector.publish("t", _events(100))
        (pinned,) = await consumer.fetch(1, timeout=5)
        offsets = [pinned.offset]
        for _ in range(100):  # bounded: the window ends it long before
            batch = await consumer.fetch(7, timeout=0.2)
            if not batch:
                break
            for delivery in batch:
                offsets.append(delivery.offset)
                await delivery.ack()
        assert offsets == list(range(20))
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def fetch() -> None:
                    for delivery in await consumer.fetch(100):
                        offsets.append(delivery.offset)
                        await delivery.ack()

                tg.start_soon(fetch)
                await anyio.wait_all_tasks_blocked()  # the fetch waits for the window
                await pinned.ack()
        assert offsets[20] == 20
        got = await collect(consumer, 100 - len(offsets), timeout=10)
        assert offsets + [d.offset for d in got] == list(range(100))
