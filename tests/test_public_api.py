"""The public surface: sorted __all__ lists that name only what exists."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = [
    "eventmesh",
    "eventmesh.bindings",
    "eventmesh.client",
    "eventmesh.connectors",
    "eventmesh.delivery",
    "eventmesh.errors",
    "eventmesh.event",
    "eventmesh.pipeline",
    "eventmesh.pipeline.cesql",
    "eventmesh.testing",
    "eventmesh.testing.strategies",
    "eventmesh.functions",
    "eventmesh.typing",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_all_is_sorted_and_complete(name: str) -> None:
    """Each public module's __all__ is sorted and every name in it exists."""
    module = importlib.import_module(name)
    assert module.__all__ == sorted(module.__all__, key=lambda n: (n.startswith("_"), n)) or (
        module.__all__ == sorted(module.__all__)
    )
    for item in module.__all__:
        assert hasattr(module, item), f"{name}.{item} is listed but missing"


def test_top_level_surface_is_what_users_are_promised() -> None:
    """The names a user imports from eventmesh do not change by accident."""
    import eventmesh

    assert set(eventmesh.__all__) >= {
        "Event",
        "connect",
        "connect_blocking",
        "Mesh",
        "DeliveryPolicy",
        "EventMeshError",
        "ConfigError",
        "EventValidationError",
        "PublishError",
        "ClosedError",
        "Drop",
        "Function",
        "__version__",
    }


def test_every_error_is_an_eventmesh_error() -> None:
    """Every exception class eventmesh exports descends from EventMeshError."""
    import eventmesh.errors as errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.EventMeshError)


def test_the_event_and_a_worker_process_load_no_servers_or_telemetry() -> None:
    """Importing eventmesh, or what a function's worker process runs, loads neither the
    servers' libraries nor the OpenTelemetry SDK; the mesh's names load on first use."""
    import subprocess
    import sys

    heavy = ["aiohttp", "grpc", "opentelemetry.sdk", "prometheus_client"]
    code = (
        "import sys, eventmesh, eventmesh.functions._worker\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
        "from eventmesh.mesh import Mesh\n"
        "print(eventmesh.Mesh is Mesh, 'connect' in dir(eventmesh))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split("\n")[:2] == ["[]", "True True"]
    import eventmesh

    with pytest.raises(AttributeError, match="no attribute 'Meshh'"):
        _ = eventmesh.Meshh  # type: ignore[attr-defined]
