"""Filters and transforms: subscription specs compiled once into plain callables.

The names below are imported when first used (PEP 562): a sidecar or mesh whose
subscriptions have no filter or transform never loads the CESQL parser, the pattern
and JSONPath compilers (about 40 ms and 1 MB at start; docs/benchmarks.md, start-up).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventmesh.pipeline import cesql
    from eventmesh.pipeline.compile import compile_pipeline
    from eventmesh.pipeline.filters import DIALECTS, compile_filter, match_all
    from eventmesh.pipeline.patterns import compile_pattern
    from eventmesh.pipeline.transforms import STEP_KINDS, compile_transforms

__all__ = [
    "DIALECTS",
    "STEP_KINDS",
    "cesql",
    "compile_filter",
    "compile_pattern",
    "compile_pipeline",
    "compile_transforms",
    "match_all",
]

_WHERE = {
    "DIALECTS": "filters",
    "STEP_KINDS": "transforms",
    "compile_filter": "filters",
    "compile_pattern": "patterns",
    "compile_pipeline": "compile",
    "compile_transforms": "transforms",
    "match_all": "filters",
}


def __getattr__(name: str) -> Any:
    if name == "cesql":
        return importlib.import_module("eventmesh.pipeline.cesql")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'eventmesh.pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"eventmesh.pipeline.{module}"), name)
    globals()[name] = value
    return value
