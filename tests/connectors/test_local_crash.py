"""The local connector keeps its word under kill -9: a child process publishes and
consumes under load and is killed at random points; after each kill every event it was
told is stored is there, and no committed position went backwards."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from eventmesh.connectors.local import LocalConfig, LocalConnector

CHILD = Path(__file__).with_name("local_crash_child.py")
KILLS = 20
BUDGET = 120.0  # seconds for the whole test, a bound far above what it takes


class _Child:
    """The child process and the complete lines it printed, read by a thread."""

    def __init__(self, data_dir: Path, run: str) -> None:
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir), run],
            stdout=subprocess.PIPE,
            env=env,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            if not raw.endswith(b"\n"):  # cut by the kill: not a report
                break
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if line == "ready":
                self.ready.set()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)


def _stored_ids(data_dir: Path) -> set[str]:
    async def read_all() -> set[str]:
        ids: set[str] = set()
        config = LocalConfig(data_dir=str(data_dir), partitions=4, max_bytes=None, max_age=None)
        async with LocalConnector(config) as connector:
            cursor: dict[int, int] = {}
            while page := await connector.read("load", after=cursor, limit=5_000):
                for stored in page:
                    ids.add(stored.event.id)
                    cursor[stored.partition] = max(cursor.get(stored.partition, -1), stored.offset)
        return ids

    return anyio.run(read_all)


def _positions(data_dir: Path) -> dict[int, int]:
    db = sqlite3.connect(f"file:{data_dir / 'events.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT part, committed FROM positions WHERE grp = 'crash'")
        return dict(rows.fetchall())
    finally:
        db.close()


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_event_and_no_commit(tmp_path: Path) -> None:
    """Killed with SIGKILL at random points 20 times, the store still holds every
    acknowledged event and no group position ever moves back."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    acked: set[str] = set()
    floor: dict[int, int] = {}  # the highest position reported or found, per partition
    deadline = time.monotonic() + BUDGET
    for run in range(KILLS):
        assert time.monotonic() < deadline, f"seed {seed}: over budget after {run} kills"
        child = _Child(data_dir, f"r{run}")
        try:
            assert child.ready.wait(timeout=60), f"seed {seed}: run {run} never got ready"
            child.ready.clear()
            # A random point: from just after opening to well into the load.
            time.sleep(rng.uniform(0.0, 0.5))
        finally:
            child.kill()
        for line in child.lines:
            kind, _, rest = line.partition(" ")
            if kind == "acked":
                acked.update(rest.split())
            elif kind == "committed" and rest:
                for item in rest.split():
                    p, c = map(int, item.split(":"))
                    floor[p] = max(floor.get(p, 0), c)
        found = _positions(data_dir)
        for p, c in floor.items():
            assert found.get(p, -1) >= c, (
                f"seed {seed}, kill {run}: partition {p} committed {c}, found {found.get(p)}"
            )
            floor[p] = found[p]
        missing = acked - _stored_ids(data_dir)
        assert not missing, f"seed {seed}, kill {run}: {len(missing)} acked events lost"
    assert len(acked) > 1_000, f"seed {seed}: too little load to prove anything ({len(acked)})"
    assert sum(floor.values()) > 0, f"seed {seed}: the group never committed anything"
