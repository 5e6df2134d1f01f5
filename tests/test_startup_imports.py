"""What `eventmesh run` loads at start: the filter and transform compilers only on use."""

from __future__ import annotations

import subprocess
import sys

from eventmesh import pipeline

DEFERRED = (
    "eventmesh.pipeline.cesql",
    "eventmesh.pipeline.patterns",
    "eventmesh.pipeline.transforms",
    "eventmesh.pipeline.filters",
)


def test_the_sidecar_and_the_mesh_load_no_filter_compiler() -> None:
    """Importing the command line, the sidecar and the mesh (a fresh interpreter) leaves
    the CESQL parser, the pattern, filter and transform compilers unloaded."""
    code = (
        "import sys, eventmesh.cli, eventmesh.server.sidecar, eventmesh.mesh\n"
        f"print(sorted(m for m in {DEFERRED!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_the_package_still_offers_every_name() -> None:
    """eventmesh.pipeline's names resolve on first use, to the modules' own objects."""
    from eventmesh.pipeline import cesql, compile_filter
    from eventmesh.pipeline.filters import compile_filter as direct

    assert compile_filter is direct
    assert cesql.__name__ == "eventmesh.pipeline.cesql"
    assert sorted(pipeline.__all__) == sorted(
        name for name in pipeline.__all__ if getattr(pipeline, name) is not None
    )
