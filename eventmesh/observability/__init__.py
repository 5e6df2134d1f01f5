"""Observability: OpenTelemetry tracing through the ``traceparent`` extension, metrics
served in the Prometheus text format, and the daemon's structured logs.

Import from the modules: ``tracing`` (spans and the trace context in events),
``metrics`` (the instruments and the Prometheus page) and ``histogram`` (the cheap
per-event latency histogram). This package re-exports nothing, so code that needs only
the histogram (the dispatcher, and with it a function's worker process) does not load
the OpenTelemetry SDK and the Prometheus exporter.

See docs/operations.md for the metrics, the spans and the log fields.
"""
