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
