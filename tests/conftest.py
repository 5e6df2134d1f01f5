"""Shared fixtures: every async test runs on asyncio with uvloop, as the daemon does."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def anyio_backend() -> Any:
    """asyncio with uvloop, the loop eventmesh uses by default."""
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture(autouse=True)
def _own_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An 'eventmesh run' a test starts keeps its local store in a directory of that test's
    own (as a fresh sidecar would), never in ./eventmesh-data of the checkout."""
    monkeypatch.setenv("EVENTMESH_DATA_DIR", str(tmp_path_factory.mktemp("eventmesh-data")))
