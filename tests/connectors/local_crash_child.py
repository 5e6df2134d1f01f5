"""A process for tests/connectors/test_local_crash.py to kill: it publishes and consumes
under load on a local store and reports, one line at a time, what it was told is safe.

    python local_crash_child.py DATA_DIR RUN

prints ``ready`` once the store is open, then lines ``acked ID ID ...`` after each
publish returned (the ids are on disk), and ``committed P:OFFSET ...`` with the
group's positions as read back from the file by a connection of its own. It stops by
itself after a bounded amount of work or time, whichever comes first.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import anyio
import anyio.to_thread

from eventmesh._loop import backend_options
from eventmesh.connectors.local import LocalConfig, LocalConnector
from eventmesh.event import Event

MAX_BATCHES = 3_000  # per producer
MAX_SECONDS = 30.0
GROUP = "crash"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def positions(db_file: str) -> list[tuple[int, int]]:
    db = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT part, committed FROM positions WHERE grp = ? ORDER BY part", (GROUP,)
        ).fetchall()
    finally:
        db.close()


async def main(data_dir: str, run: str) -> None:
    config = LocalConfig(data_dir=data_dir, partitions=4, max_bytes=None, max_age=None)
    async with LocalConnector(config) as connector, anyio.create_task_group() as tg:
        say("ready")

        async def produce(producer: int) -> None:
            for batch in range(MAX_BATCHES):
                size = 1 + (batch * 7 + producer) % 40
                events = [
                    Event(
                        type="crash.test",
                        source="/crash",
                        id=f"{run}-{producer}-{batch}-{i}",
                        data={"pad": "x" * (i % 50)},
                        extensions={"partitionkey": f"k{(batch + i) % 13}"},
                    )
                    for i in range(size)
                ]
                await connector.publish("load", events)
                say("acked " + " ".join(e.id for e in events))

        async def consume() -> None:
            async with connector.subscribe("load", GROUP, start="earliest") as consumer:
                while True:
                    for delivery in await consumer.fetch(100, timeout=0.5):
                        await delivery.ack()

        async def report() -> None:
            db_file = str(Path(data_dir) / "events.db")
            while True:
                found = await anyio.to_thread.run_sync(positions, db_file)
                say("committed " + " ".join(f"{p}:{c}" for p, c in found))
                await anyio.sleep(0.02)

        for producer in range(2):
            tg.start_soon(produce, producer)
        for _ in range(2):
            tg.start_soon(consume)
        tg.start_soon(report)
        await anyio.sleep(MAX_SECONDS)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], backend_options=backend_options())
