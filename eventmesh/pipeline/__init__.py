"""Filters and transforms: subscription specs compiled once into plain callables."""

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
