"""Fixtures of the adversarial suite: a fresh ``eventmesh run`` subprocess per test
(see adversary.py, which the tests import their helpers from)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from adversary import Sidecar, start_sidecar, stop_sidecar


@pytest.fixture
async def sidecar_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Sidecar]]:
    """``sidecar_factory(extra_config)``: start a sidecar; all are stopped at the end."""
    started: list[Sidecar] = []

    def start(extra: Mapping[str, Any] | None = None) -> Sidecar:
        sidecar = start_sidecar(tmp_path, extra)
        started.append(sidecar)
        return sidecar

    try:
        yield start
    finally:
        for sidecar in started:
            await sidecar.close()
            stop_sidecar(sidecar.proc)


@pytest.fixture
async def sidecar(sidecar_factory: Callable[..., Sidecar]) -> Sidecar:
    """A sidecar with the adversarial config (:data:`BASE_CONFIG`)."""
    return sidecar_factory()
