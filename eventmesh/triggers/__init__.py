"""The serverless layer: functions triggered by events, their invokers, limits and pools."""

from eventmesh.triggers.function import (
    BatchConfig,
    CorrelateConfig,
    Drop,
    Function,
    FunctionConfig,
    TriggerConfig,
)
from eventmesh.triggers.stats import FunctionStats

__all__ = [
    "BatchConfig",
    "CorrelateConfig",
    "Drop",
    "Function",
    "FunctionConfig",
    "FunctionStats",
    "TriggerConfig",
]
