"""Shared fixtures: every async test runs on asyncio with uvloop (where it is installed:
the core alone has none), as the daemon does."""

from __future__ import annotations

from typing import Any

import pytest

from eventmesh._loop import backend_options


@pytest.fixture
def anyio_backend() -> Any:
    """asyncio with uvloop, the loop eventmesh uses by default, when it is installed."""
    return ("asyncio", backend_options())


@pytest.fixture(autouse=True)
def _own_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An 'eventmesh run' a test starts keeps its local store in a directory of that test's
    own (as a fresh sidecar would), never in ./eventmesh-data of the checkout."""
    monkeypatch.setenv("EVENTMESH_DATA_DIR", str(tmp_path_factory.mktemp("eventmesh-data")))
