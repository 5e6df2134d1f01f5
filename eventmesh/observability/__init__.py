"""Observability: OpenTelemetry tracing through the ``traceparent`` extension, metrics
served in the Prometheus text format, and the daemon's structured logs.

See docs/operations.md for the metrics, the spans and the log fields.
"""

from eventmesh.observability.histogram import Histogram
from eventmesh.observability.metrics import FunctionFigures, MeshMetrics, SubscriptionFigures
from eventmesh.observability.tracing import Tracing

__all__ = ["FunctionFigures", "Histogram", "MeshMetrics", "SubscriptionFigures", "Tracing"]
