"""What the local connector promises beyond the conformance kit: each fsync mode keeps
events across a restart, retention by size and age, positions that survive a restart
only over contiguous acks, one process per data directory, partitions that stay put,
events read back from disk, and its place as the daemon's default."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

import eventmesh
from eventmesh.config import load_config
from eventmesh.connectors.base import Delivery, StoredEvent
from eventmesh.connectors.local import LocalConfig, LocalConnector
from eventmesh.errors import ConfigError, ConnectError, RejectedError, SubscribeError
from eventmesh.event import Event
from eventmesh.testing import collect

pytestmark = pytest.mark.anyio


def _events(count: int, *, key: str | None = None, pad: int = 0) -> list[Event]:
    return [
        Event(
            type="t",
            source="/local",
            data={"n": i, "pad": "x" * pad},
            extensions={"partitionkey": key} if key else {},
        )
        for i in range(count)
    ]


def _numbers(deliveries: Sequence[Delivery] | Sequence[StoredEvent]) -> list[int]:
    return [d.event.data["n"] for d in deliveries]


async def _read_all(connector: LocalConnector, topic: str) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    cursor: dict[int, int] = {}
    while page := await connector.read(topic, after=cursor, limit=1_000):
        out += page
        for stored in page:
            cursor[stored.partition] = max(cursor.get(stored.partition, -1), stored.offset)
    return out


@pytest.mark.parametrize("fsync", ["always", "batch", "interval"])
async def test_each_fsync_mode_keeps_published_events_across_a_restart(
    tmp_path: Path, fsync: str
) -> None:
    """Whatever the fsync mode, events acknowledged before close are there after reopen."""
    config = LocalConfig(data_dir=str(tmp_path), fsync=fsync)  # type: ignore[arg-type]
    async with LocalConnector(config) as connector, anyio.create_task_group() as tg:
        for _ in range(4):  # concurrent publishes: grouped into commits under batch
            tg.start_soon(connector.publish, "t", _events(25))
    async with LocalConnector(config) as connector:
        assert len(await _read_all(connector, "t")) == 100


async def test_retention_by_size_drops_the_oldest_and_moves_groups_past_them(
    tmp_path: Path,
) -> None:
    """Past max_bytes the oldest events go; a group that had not read them starts after."""
    config = LocalConfig(data_dir=str(tmp_path), partitions=1, max_bytes=20_000)
    async with LocalConnector(config) as connector:
        async with connector.subscribe("t", "slow", start="earliest"):
            pass  # the group exists, at offset 0, and reads nothing
        for i in range(0, 400, 50):
            await connector.publish("t", _events(400, pad=100)[i : i + 50])
        with anyio.fail_after(15):
            while (kept := await _read_all(connector, "t"))[0].offset == 0:
                await anyio.sleep(0.05)
        assert kept[-1].offset == 399  # the newest stay
        assert sum(len(json.dumps(s.event.data)) for s in kept) < 25_000
        assert connector.released()["t"] == kept[0].offset
        async with connector.subscribe("t", "slow") as consumer:
            got = await collect(consumer, 1, timeout=10)
        assert got[0].offset >= kept[0].offset


async def test_retention_by_age_drops_old_events(tmp_path: Path) -> None:
    """Events older than max_age are deleted, read or not; only those a group had not
    committed count as released (as on the memory connector)."""
    # 2 s: long enough that a busy machine reads and commits before anything expires.
    config = LocalConfig(data_dir=str(tmp_path), max_age=2.0)  # type: ignore[arg-type]
    async with LocalConnector(config) as connector:
        async with connector.subscribe("t", "slow", start="earliest"):
            pass  # a group that reads nothing
        async with connector.subscribe("u", "quick", start="earliest") as quick:
            await connector.publish("u", _events(10))
            for delivery in await collect(quick, 10, timeout=10):
                await delivery.ack()
        await connector.publish("t", _events(10))
        assert len(await _read_all(connector, "t")) == 10
        with anyio.fail_after(15):
            while await _read_all(connector, "t") or await _read_all(connector, "u"):
                await anyio.sleep(0.05)
        assert connector.released() == {"t": 10}  # u's events were all committed


async def test_positions_survive_a_restart_only_over_contiguous_acks(tmp_path: Path) -> None:
    """Acks after an unacked event commit nothing; contiguous ones survive a restart."""
    config = LocalConfig(data_dir=str(tmp_path), partitions=1)
    async with LocalConnector(config) as connector, connector.subscribe("t", "g") as consumer:
        await connector.publish("t", _events(5))
        got = await collect(consumer, 5, timeout=10, ack=False)
        for delivery in got[1:]:
            await delivery.ack()
    async with LocalConnector(config) as connector, connector.subscribe("t", "g") as consumer:
        got = await collect(consumer, 5, timeout=10, ack=False)
        assert _numbers(got) == [0, 1, 2, 3, 4]
        for delivery in got[:3]:
            await delivery.ack()
    async with LocalConnector(config) as connector:
        async with connector.subscribe("t", "g") as consumer:
            got = await collect(consumer, 2, timeout=10)
            got += await collect(consumer, 1, timeout=0.3)
        assert _numbers(got) == [3, 4]


async def test_lag_counts_what_the_group_has_not_acked(tmp_path: Path) -> None:
    """lag() is the stored events past the group's committed positions."""
    async with (
        LocalConnector(LocalConfig(data_dir=str(tmp_path), partitions=2)) as connector,
        connector.subscribe("t", "g") as consumer,
    ):
        await connector.publish("t", _events(10))
        assert consumer.lag() == 10
        got = await collect(consumer, 10, timeout=10, ack=False)
        for delivery in got:
            if delivery.offset < 2:
                await delivery.ack()
        assert consumer.lag() == 6


async def test_one_connector_holds_a_data_directory(tmp_path: Path) -> None:
    """A second connector on an open data directory is refused with ConnectError naming
    it; once the first closes, the second opens."""
    config = LocalConfig(data_dir=str(tmp_path))
    async with LocalConnector(config):
        with pytest.raises(ConnectError, match="in use by another process"):
            await LocalConnector(config).open()
    async with LocalConnector(config) as again:
        assert again.is_open


async def test_a_key_stays_in_its_partition_across_restarts(tmp_path: Path) -> None:
    """The partition of a partitionkey does not depend on the process (hash() would)."""
    config = LocalConfig(data_dir=str(tmp_path), partitions=8)
    code = (
        "import anyio, sys\n"
        "from eventmesh.connectors.local import LocalConfig, LocalConnector\n"
        "from eventmesh.event import Event\n"
        "async def main():\n"
        f"    async with LocalConnector(LocalConfig(data_dir={str(tmp_path)!r}, partitions=8)) "
        "as c:\n"
        "        await c.publish('t', [Event(type='t', source='/s', data={'n': 0},"
        " extensions={'partitionkey': f'order-{k}'}) for k in range(20)])\n"
        "anyio.run(main)\n"
    )
    await anyio.run_process([sys.executable, "-c", code], check=True)
    async with LocalConnector(config) as connector:
        await connector.publish(
            "t", [Event(type="t", source="/s", extensions={"partitionkey": f"order-{k}"})
                  for k in range(20)]
        )  # fmt: skip
        stored = await _read_all(connector, "t")
    partitions: dict[object, set[int]] = {}
    for s in stored:
        partitions.setdefault(s.event.partitionkey, set()).add(s.partition)
    assert len(partitions) == 20
    assert all(len(found) == 1 for found in partitions.values()), partitions
    assert len(set().union(*partitions.values())) > 1  # the keys are spread


async def test_consumers_behind_the_memory_tail_read_from_disk(tmp_path: Path) -> None:
    """With a small in-memory tail, a group starting at 'earliest' after a restart gets
    every event, in order per key, from disk."""
    config = LocalConfig(data_dir=str(tmp_path), partitions=2, cache_events=32)
    async with LocalConnector(config) as connector:
        for i in range(0, 600, 100):
            await connector.publish("t", _events(600, key=None)[i : i + 100])
    async with LocalConnector(config) as connector:
        await connector.publish("t", _events(1, key="late"))
        async with connector.subscribe("t", "g", start="earliest") as consumer:
            got = await collect(consumer, 601, timeout=20)
    assert len(got) == 601
    for p in (0, 1):
        offsets = [d.offset for d in got if d.partition == p]
        assert offsets == sorted(offsets) == list(range(len(offsets)))


async def test_an_event_time_with_an_offset_comes_back_as_it_was(tmp_path: Path) -> None:
    """A time with a non-UTC offset, and bytes data, survive the disk unchanged."""
    stamp = datetime(2024, 5, 1, 12, 0, 30, 250000, tzinfo=timezone(timedelta(hours=2)))
    sent = [
        Event(type="t", source="/s", id="a", time=stamp, data={"n": 0}),
        Event(type="t", source="/s", id="b", data=b"\x00\xff", extensions={"n": 3}),
    ]
    config = LocalConfig(data_dir=str(tmp_path), partitions=1)
    async with LocalConnector(config) as connector:
        await connector.publish("t", sent)
    async with LocalConnector(config) as connector:
        back = [s.event for s in await _read_all(connector, "t")]
    assert back == sent
    assert back[0].time is not None
    assert back[0].time.utcoffset() == timedelta(hours=2)


async def test_state_and_positions_live_in_the_same_file(tmp_path: Path) -> None:
    """A state bucket written before a restart is loaded after it."""
    config = LocalConfig(data_dir=str(tmp_path))
    async with LocalConnector(config) as connector:
        store = connector.state("subscriptions")
        assert store is not None
        await store.put("billing", b'{"topic": "orders"}')
    async with LocalConnector(config) as connector:
        store = connector.state("subscriptions")
        assert store is not None
        assert await store.load() == {"billing": b'{"topic": "orders"}'}
        assert await connector.state("other").load() == {}  # type: ignore[union-attr]


def test_config_mistakes_name_the_key() -> None:
    """A bad local setting is a ConfigError at its key."""
    with pytest.raises(ConfigError, match=r"connectors\.default"):
        load_config({"connectors": {"default": {"type": "local", "partitions": 0}}})
    with pytest.raises(ConfigError, match="fsync"):
        load_config({"connectors": {"default": {"type": "local", "fsync": "sometimes"}}})


async def test_connect_with_a_data_dir_is_durable_and_without_one_is_memory(
    tmp_path: Path,
) -> None:
    """connect(data_dir=...) keeps events across restarts; connect() stays in memory."""
    async with eventmesh.connect() as mesh:
        assert mesh.config.connectors["default"].type == "memory"  # type: ignore[attr-defined]
    async with eventmesh.connect(data_dir=tmp_path) as mesh:
        await mesh.publish("orders", Event(type="t", source="/s", id="kept"))
    got: list[str] = []
    done = anyio.Event()

    async def handler(event: Event) -> None:
        got.append(event.id)
        done.set()

    async with eventmesh.connect(data_dir=tmp_path) as mesh:
        await mesh.subscribe("orders", "g", handler=handler, start="earliest")  # type: ignore[attr-defined]
        with anyio.fail_after(10):
            await done.wait()
    assert got == ["kept"]
    with pytest.raises(ConfigError, match="data_dir"):
        eventmesh.connect("http://127.0.0.1:1", data_dir=tmp_path)


def _run_sidecar(*extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    """'eventmesh run' on free ports; its log lines up to the 'running' one."""
    ports = ["--set", "server.http.port=0", "--set", "server.grpc.port=0"]
    ports += ["--set", "server.admin.port=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventmesh.cli", "run", *ports, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if " running: " in line:
            break
    return proc, lines


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_eventmesh_run_keeps_events_in_its_data_dir(tmp_path: Path) -> None:
    """'eventmesh run' names its data directory in its first log line and stores there;
    a config with a memory connector names none."""
    data = tmp_path / "store"
    proc, lines = _run_sidecar("--data-dir", str(data))
    try:
        first = json.loads(lines[0])["message"]
        assert first.endswith(f"data directory {data}")
        running = json.loads(lines[-1])["message"]
        assert "connectors default (local)" in running
        url = running.split("http ", 1)[1].split(",", 1)[0]
        published = subprocess.run(
            [sys.executable, "-m", "eventmesh.cli", "publish", "orders", "--type", "t",
             "--source", "/cli", "--id", "from-cli", "--url", url],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
    finally:
        _stop(proc)

    async def stored() -> list[str]:
        async with LocalConnector(LocalConfig(data_dir=str(data))) as connector:
            return [s.event.id for s in await _read_all(connector, "orders")]

    assert anyio.run(stored) == ["from-cli"]
    memory = tmp_path / "memory.yaml"
    memory.write_text("connectors:\n  default: {type: memory}\n", encoding="utf-8")
    proc, lines = _run_sidecar("-c", str(memory), "--data-dir", str(tmp_path / "unused"))
    try:
        assert "no data directory" in json.loads(lines[0])["message"]
        assert "connectors default (memory)" in json.loads(lines[-1])["message"]
    finally:
        _stop(proc)
    assert not (tmp_path / "unused").exists()


async def test_a_file_of_another_layout_is_refused(tmp_path: Path) -> None:
    """A data directory whose events.db has other tables is refused, saying what to do,
    and is left as it was."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "events.db")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body BLOB)")
    db.commit()
    db.close()
    with pytest.raises(ConnectError, match=r"layout 0 and 1 tables.*move it aside"):
        await LocalConnector(LocalConfig(data_dir=str(tmp_path))).open()
    db = sqlite3.connect(tmp_path / "events.db")
    tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    db.close()
    assert tables == [("events",)]


async def test_a_deleted_group_starts_again_from_its_start_position(tmp_path: Path) -> None:
    """delete_group forgets a group and its saved positions: joining again is a new
    group; a group with members is not deleted."""
    config = LocalConfig(data_dir=str(tmp_path), partitions=1)
    async with LocalConnector(config) as connector:
        async with connector.subscribe("t", "g", start="earliest") as consumer:
            await connector.publish("t", _events(3))
            assert len(await collect(consumer, 3, timeout=10)) == 3
            with pytest.raises(SubscribeError, match="close its subscriptions"):
                await connector.delete_group("t", "g")
        assert await connector.delete_group("t", "g")
        assert not await connector.delete_group("t", "g")
    async with (
        LocalConnector(config) as connector,
        connector.subscribe("t", "g", start="earliest") as consumer,
    ):
        got = await collect(consumer, 3, timeout=10)
    assert _numbers(got) == [0, 1, 2]


async def test_a_fetch_cancelled_while_it_reads_from_disk_loses_nothing(tmp_path: Path) -> None:
    """A caller's timeout that cancels a fetch while it reads older events from disk:
    those events come with the next fetch, in order, and the commit moves past them."""
    config = LocalConfig(data_dir=str(tmp_path), partitions=1, cache_events=16)
    async with (
        LocalConnector(config) as connector,
        connector.subscribe("t", "g", start="earliest") as consumer,
    ):
        await connector.publish("t", _events(100))  # the first 84 only on disk now
        with anyio.move_on_after(0) as scope:
            await consumer.fetch(10)
        assert scope.cancelled_caught
        offsets: list[int] = []
        with anyio.fail_after(10):
            while len(offsets) < 100:
                batch = await consumer.fetch(50, timeout=5)
                assert batch, f"nothing after offset {offsets[-1:]}"
                for delivery in batch:
                    offsets.append(delivery.offset)
                    await delivery.ack()
        assert offsets == list(range(100))
        assert consumer.lag() == 0


async def test_a_close_made_in_a_cancelled_scope_still_stops_the_writer(tmp_path: Path) -> None:
    """Closing inside a cancelled scope (a task group shutting down, a timeout) still
    stops the writer thread, which would hold the process at exit, and frees the
    directory for the next connector."""
    import threading

    def writers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "eventmesh-local-writer"}

    before = writers()
    connector = LocalConnector(LocalConfig(data_dir=str(tmp_path)))
    await connector.open()
    await connector.publish("t", _events(3))
    (writer,) = writers() - before  # this connector's own
    with anyio.CancelScope() as scope:
        scope.cancel()
        await connector.close()
    assert not writer.is_alive()
    async with LocalConnector(LocalConfig(data_dir=str(tmp_path))) as again:
        assert len(await again.read("t")) == 3


async def test_a_name_that_is_not_unicode_text_is_refused_alone(tmp_path: Path) -> None:
    """A topic or group name with a lone surrogate cannot be stored as SQLite text: it is
    refused at once, naming it, and a producer publishing meanwhile is not failed with
    it."""
    async with LocalConnector(LocalConfig(data_dir=str(tmp_path))) as connector:
        results: dict[str, str] = {}

        async def publish(topic: str) -> None:
            try:
                await connector.publish(topic, _events(1))
                results[topic] = "stored"
            except RejectedError as exc:
                results[topic] = str(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish, "x\ud800")
            tg.start_soon(publish, "good")
        assert results["good"] == "stored"
        assert "not valid Unicode text" in results["x\ud800"]
        with pytest.raises(SubscribeError, match="not valid Unicode text"):
            connector.subscribe("good", "g\udfff")


async def test_a_damaged_stored_batch_is_a_connector_error_that_says_what_to_do(
    tmp_path: Path,
) -> None:
    """A stored batch whose bytes were damaged on disk: reading it back is a
    SubscribeError naming the store and what to do, not a decoder's own exception."""
    import sqlite3

    async with LocalConnector(LocalConfig(data_dir=str(tmp_path), partitions=1)) as connector:
        for event in _events(3):
            await connector.publish("t", [event])
    db = sqlite3.connect(tmp_path / "events.db")
    db.execute("UPDATE batches SET body = x'c1c1c1' WHERE id = (SELECT min(id) FROM batches)")
    db.commit()
    db.close()
    async with LocalConnector(LocalConfig(data_dir=str(tmp_path), partitions=1)) as connector:
        with pytest.raises(SubscribeError, match="damaged; restore it from a backup"):
            await connector.read("t")


async def test_retention_that_failed_to_commit_deletes_the_events_on_its_next_try(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An expired batch whose deletion failed to commit (here a trigger stands in for a
    full disk) is deleted by the next try once the store can write again: the failed try
    does not leave the partition's bookkeeping moved past rows still on disk."""
    import sqlite3

    from eventmesh.testing.polling import eventually

    def rows() -> int:
        with contextlib.closing(sqlite3.connect(tmp_path / "events.db", timeout=5)) as db:
            return int(db.execute("SELECT count(*) FROM batches").fetchone()[0])

    def execute(sql: str) -> None:
        with contextlib.closing(sqlite3.connect(tmp_path / "events.db", timeout=5)) as db:
            db.execute(sql)
            db.commit()

    config = LocalConfig(data_dir=str(tmp_path), partitions=1, max_age=0.3)
    async with LocalConnector(config) as connector:
        await connector.publish("t", _events(3))
        execute(
            "CREATE TRIGGER fail_saving BEFORE UPDATE ON partitions "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        await eventually(
            lambda: "retention failed" in caplog.text, what="the retention to fail", timeout=10
        )
        assert rows() == 1
        execute("DROP TRIGGER fail_saving")
        await eventually(lambda: rows() == 0, what="the expired batch to go", timeout=10)


async def test_a_damaged_store_file_is_refused_saying_to_restore_it(tmp_path: Path) -> None:
    """An events.db that is no database (overwritten, truncated) is refused with advice
    about the file, not about permissions."""
    (tmp_path / "events.db").write_bytes(b"not a database at all, " * 100)
    with pytest.raises(ConnectError, match="damaged: restore it from a backup"):
        await LocalConnector(LocalConfig(data_dir=str(tmp_path))).open()
