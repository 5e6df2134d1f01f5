"""The event loop eventmesh runs on: asyncio, with uvloop wherever it is installed (the
``sidecar`` extra installs it; without it, asyncio's own loop, silently); and the garbage
collector settings of the daemon."""

from __future__ import annotations

import gc
from functools import cache

__all__ = ["backend_options", "tune_gc"]

DAEMON_GC_THRESHOLD = (50_000, 20, 20)
"""Generation-0 collections every 50,000 allocations instead of Python's 700. Each event
allocates a handful of objects (the struct, its dicts, the data) that die young without
cycles, so the default threshold spends a third of the ingress CPU collecting nothing
(measured with benchmarks/bench_http.py --profile)."""


@cache
def backend_options() -> dict[str, bool]:
    """anyio's asyncio backend options: uvloop when it can be imported."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {"use_uvloop": False}
    return {"use_uvloop": True}


def tune_gc() -> None:
    """Set the daemon's collector: move what start-up allocated out of the collector's
    way (``gc.freeze``) and collect young objects less often. Only ``eventmesh run``
    calls it; a library must not change its host process's collector."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*DAEMON_GC_THRESHOLD)
