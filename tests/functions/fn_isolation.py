"""Worker handlers for the isolation tests: one that hangs, one that refuses."""

from __future__ import annotations

import os
import time
from pathlib import Path

from eventmesh import DeliveryError, Event


def hang_once(event: Event) -> Event:
    """Write this worker's pid to the marker file and hang, the first time; after that,
    reply with the worker's pid."""
    marker = Path(event.data["marker"])
    if not marker.exists():
        marker.write_text(str(os.getpid()), encoding="utf-8")
        time.sleep(60)
    return Event(type="done", source="/worker", data={"pid": os.getpid()})


def refuse(event: Event) -> None:
    """Raise a DeliveryError with the event's ``retryable`` and ``retry_after``."""
    raise DeliveryError(
        "cannot handle this order",
        retryable=event.data["retryable"],
        retry_after=event.data.get("retry_after"),
    )
