"""Fixtures of the interop suite (helpers in _interop.py): the foreign clients, built by
scripts/interop.sh into .cache/, and the Kafka and NATS brokers of the plugins' tests."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from _interop import REPO, build

# -- the brokers: the plugins' own fixtures, shared rather than copied ---------------------


def _plugin_fixtures(plugin: str, module: str) -> Any:
    path = REPO / "plugins" / plugin / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location(module, path)
    assert spec is not None
    assert spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


kafka_bootstrap = _plugin_fixtures("eventmesh-kafka", "_interop_kafka_fixtures").kafka_bootstrap
_nats = _plugin_fixtures("eventmesh-nats", "_interop_nats_fixtures")
nats_url, stream_prefix = _nats.nats_url, _nats.stream_prefix


@pytest.fixture
def anyio_backend() -> Any:
    """asyncio with uvloop, the loop eventmesh uses by default."""
    return ("asyncio", {"use_uvloop": True})


# -- the foreign clients ------------------------------------------------------------------


@pytest.fixture(scope="session")
def go_sdk() -> list[str]:
    """The Go program on github.com/cloudevents/sdk-go/v2 (tests/interop/go)."""
    return build("go")


@pytest.fixture(scope="session")
def java_kafka() -> list[str]:
    """The Java program on io.cloudevents:cloudevents-kafka (tests/interop/java-kafka)."""
    return build("java-kafka")
