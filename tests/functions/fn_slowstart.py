"""A handler module that takes a second to import (a heavy dependency, say), for the
cold-start tests. Each import appends the importing process's id to the file named by
$FN_SLOWSTART_LOG, when set (spawned workers inherit the environment)."""

from __future__ import annotations

import os
import time

from eventmesh import Event

_log = os.environ.get("FN_SLOWSTART_LOG")
if _log:
    with open(_log, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
time.sleep(1.0)


def handle(event: Event) -> Event:
    """Reply at once: only the import is slow."""
    return Event(type="handled", source="/slowstart", data={"pid": os.getpid()})
