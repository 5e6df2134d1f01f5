"""What a module imports is what it speaks: code that never speaks gRPC never loads grpcio."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    ["eventmesh", "eventmesh._status", "eventmesh.client.http", "eventmesh.server.http"],
)
def test_http_only_code_does_not_load_grpc(module: str) -> None:
    """Importing the core, the status table, or the HTTP client/server leaves grpc unloaded."""
    probe = f"import sys, {module}; print('grpc' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False", f"importing {module} loaded grpc"


@pytest.mark.core
@pytest.mark.parametrize(
    "module", ["eventmesh", "eventmesh.mesh", "eventmesh.client", "eventmesh.config"]
)
def test_the_core_loads_no_optional_package(module: str) -> None:
    """Importing eventmesh, the mesh, the SDK or the config loads none of the extras'
    packages (eventmesh._imports.EXTRAS), installed or not."""
    probe = (
        f"import sys, {module}; from eventmesh._imports import EXTRAS; "
        "print(sorted({m.partition('.')[0] for m in sys.modules} & set(EXTRAS)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", f"importing {module} loaded {out.stdout.strip()}"


@pytest.mark.parametrize(
    "module", ["eventmesh.server.sidecar", "eventmesh.client.http", "eventmesh.client.grpc"]
)
def test_the_sidecar_and_remote_clients_load_only_their_extra(module: str) -> None:
    """The sidecar and the remote clients load no OpenTelemetry (until tracing is
    configured), no rich, no cloudevents SDK and no test tools."""
    probe = (
        f"import sys, {module}; from eventmesh._imports import EXTRAS; "
        "loaded = {m.partition('.')[0] for m in sys.modules}; "
        "print(sorted(n for n in loaded & set(EXTRAS) if EXTRAS[n] not in "
        "('sidecar', 'prometheus')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", f"importing {module} loaded {out.stdout.strip()}"
