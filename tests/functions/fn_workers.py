"""Handlers the worker-process tests import by path ("fn_workers:name") in a spawned
worker: the test directory is on the child's sys.path because spawn copies the parent's."""

from __future__ import annotations

import os
from pathlib import Path

from eventmesh import Drop, Event


def enrich(event: Event) -> Event:
    """Reply with the event's data and the worker's pid."""
    return Event(type="enriched", source="/worker", data={**event.data, "pid": os.getpid()})


async def enrich_async(event: Event) -> list[Event]:
    """An async handler in a worker: two replies."""
    return [Event(type="a", source="/worker"), Event(type="b", source="/worker")]


def drop(event: Event) -> None:
    """Drop every event."""
    raise Drop("not for us")


def die_once(event: Event) -> Event:
    """Kill the worker process at the first call for a marker file, succeed after."""
    marker = Path(event.data["marker"])
    if not marker.exists():
        marker.write_text("died", encoding="utf-8")
        os._exit(3)
    return Event(type="survived", source="/worker", data={"pid": os.getpid()})


def total(events: list[Event]) -> Event:
    """A batch handler: the sum of the events' n."""
    return Event(type="total", source="/worker", data={"sum": sum(e.data["n"] for e in events)})


def noop(event: Event) -> None:
    """Do nothing (cold-start benchmarks)."""


def exit_once(event: Event) -> Event:
    """Raise a BaseException that is no Exception (SystemExit, KeyboardInterrupt or
    CancelledError, by the event's data) at the first call for a marker file."""
    import asyncio
    import sys

    marker = Path(event.data["marker"])
    if not marker.exists():
        marker.write_text("raised", encoding="utf-8")
        kind = event.data["kind"]
        if kind == "exit":
            sys.exit(3)
        if kind == "interrupt":
            raise KeyboardInterrupt
        raise asyncio.CancelledError
    return Event(type="survived", source="/worker", data={"kind": event.data["kind"]})


def slow(event: Event) -> Event:
    """Take 0.4 s, then reply."""
    import time

    time.sleep(0.4)
    return Event(type="slow", source="/worker", data=event.data)


def ignore_sigterm_and_hang(event: Event) -> None:
    """Ignore SIGTERM, write the worker's pid to the event's marker file, hang."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(event.data["marker"]).write_text(str(os.getpid()), encoding="utf-8")
    while True:
        time.sleep(0.1)


def exit_always(event: Event) -> None:
    """Call sys.exit (from a thread or the mesh's own loop, by the function's isolation)."""
    import sys

    sys.exit(4)


async def exit_always_async(event: Event) -> None:
    """sys.exit from an async handler, on the mesh's own loop."""
    import sys

    sys.exit(5)
