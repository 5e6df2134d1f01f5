"""The event loop eventmesh runs on: asyncio, with uvloop wherever it is installed."""

from __future__ import annotations

from functools import cache

__all__ = ["backend_options"]


@cache
def backend_options() -> dict[str, bool]:
    """anyio's asyncio backend options: uvloop when it can be imported."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {"use_uvloop": False}
    return {"use_uvloop": True}
