"""Shared fixtures: every async test runs on asyncio with uvloop, as the daemon does."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def anyio_backend() -> Any:
    """asyncio with uvloop, the loop eventmesh uses by default."""
    return ("asyncio", {"use_uvloop": True})
