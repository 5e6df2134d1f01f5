"""The trace context that code outside tracing hands over, without loading OpenTelemetry.

The servers set the W3C headers a request came with (:func:`transport_parent`) and the
webhook sink asks for the active span's ``traceparent`` (:func:`current_traceparent`)
whether tracing is on or not; :mod:`eventmesh.observability.tracing` (the ``otel``
extra) reads what they set. So the sidecar runs, and webhooks deliver, without the
extra installed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["current_traceparent", "transport_headers", "transport_parent"]

_transport: ContextVar[tuple[str, str | None] | None] = ContextVar(
    "eventmesh_transport_parent", default=None
)


@contextmanager
def transport_parent(traceparent: str | None, tracestate: str | None = None) -> Iterator[None]:
    """Within, a publish with no active span and no ``traceparent`` on its first event
    continues the trace these W3C headers name: the span of the client that sent the
    request. The values are read only if a publish needs them (tracing on)."""
    if traceparent is None:
        yield
        return
    token = _transport.set((traceparent, tracestate))
    try:
        yield
    finally:
        _transport.reset(token)


def transport_headers() -> tuple[str, str | None] | None:
    """The ``(traceparent, tracestate)`` :func:`transport_parent` set here, if any."""
    return _transport.get()


def current_traceparent() -> str | None:
    """The ``traceparent`` of the active span, None when there is none (tracing off, or
    OpenTelemetry not even loaded, when no span can be active)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
