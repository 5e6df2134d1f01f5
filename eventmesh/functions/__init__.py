"""The serverless layer: functions triggered by events, their invokers, limits and pools."""

from eventmesh.functions.function import (
    BatchConfig,
    CorrelateConfig,
    Drop,
    Function,
    FunctionConfig,
    TriggerConfig,
)
from eventmesh.functions.stats import FunctionStats

__all__ = [
    "BatchConfig",
    "CorrelateConfig",
    "Drop",
    "Function",
    "FunctionConfig",
    "FunctionStats",
    "TriggerConfig",
]
