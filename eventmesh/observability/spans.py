"""The delivery span of the mesh's own tracer provider, recorded without the SDK's
generic span.

The OpenTelemetry SDK starts and ends a span in about 25 µs (a sampler call, locks,
bounded containers, a copy at the end), where the in-memory route delivers a whole
event in under 4. A sampled publish of a hundred events makes a hundred delivery spans,
so at 1 % sampling those spans were most of what tracing cost.

A provider the mesh builds (``tracing:`` in the configuration) samples with
``ParentBased(ALWAYS_ON)``: a delivery under a sampled ``traceparent`` is always
recorded, and no sampler needs asking. :class:`DeliverySpan` is that span. It is a full,
recording :class:`opentelemetry.trace.Span` while the handler runs (what the handler
adds to ``trace.get_current_span()`` is kept, its own spans become children), and when
it ends it hands the provider's span processor the same
:class:`~opentelemetry.sdk.trace.ReadableSpan` the SDK would make, bounded by the same
:class:`~opentelemetry.sdk.trace.SpanLimits`. A provider given to the mesh keeps the
SDK's spans: its sampler and processors are its own.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any, Final

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util import types

__all__ = ["DeliveryRecorder", "DeliverySpan"]

_UNSET: Final = Status(StatusCode.UNSET)


class DeliveryRecorder:
    """What the delivery spans of one mesh-built provider share: where they go when they
    end, the provider's resource and limits, and the mesh's instrumentation scope."""

    __slots__ = ("limits", "processor", "resource", "scope")

    def __init__(
        self,
        processor: SpanProcessor,
        *,
        resource: Resource,
        limits: SpanLimits,
        scope: InstrumentationScope,
    ) -> None:
        self.processor = processor
        self.resource = resource
        self.limits = limits
        self.scope = scope


class DeliverySpan(Span):
    """One delivery of one event (kind CONSUMER), started when it is made.

    ``attributes`` are the mesh's own, known to be valid strings: they are kept as given.
    What the handler sets is checked and bounded as the SDK does.
    """

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_links",
        "_name",
        "_parent",
        "_recorder",
        "_start_time",
        "_status",
    )

    def __init__(
        self,
        recorder: DeliveryRecorder,
        name: str,
        context: SpanContext,
        parent: SpanContext,
        attributes: dict[str, str],
    ) -> None:
        self._recorder = recorder
        self._name = name
        self._context = context
        self._parent = parent
        limit = recorder.limits.max_span_attributes
        self._attributes: dict[str, Any] | BoundedAttributes = (
            attributes if limit is None or len(attributes) <= limit else self._bounded(attributes)
        )
        self._events: list[SpanEvent] | None = None
        self._links: list[Link] | None = None
        self._status = _UNSET
        self._start_time = time_ns()
        self._end_time: int | None = None

    # -- reading -------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    # -- what the handler adds -----------------------------------------------------------

    def _bounded(self, attributes: Mapping[str, Any]) -> BoundedAttributes:
        limits = self._recorder.limits
        return BoundedAttributes(
            limits.max_span_attributes,
            attributes,
            immutable=False,
            max_value_len=limits.max_span_attribute_length,
        )

    def _checked_attributes(self) -> BoundedAttributes:
        attributes = self._attributes
        if not isinstance(attributes, BoundedAttributes):
            attributes = self._attributes = self._bounded(attributes)
        return attributes

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self._end_time is None:
            checked = self._checked_attributes()
            for key, value in attributes.items():
                checked[key] = value

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._end_time is None:
            self._checked_attributes()[key] = value

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        if self._end_time is not None:
            return
        limits = self._recorder.limits
        bounded = BoundedAttributes(
            limits.max_event_attributes,
            attributes,
            immutable=True,
            max_value_len=limits.max_attribute_length,
        )
        if self._events is None:
            self._events = []
        self._events.append(SpanEvent(name, bounded, timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end_time is not None or not (context.is_valid or attributes):
            return
        limits = self._recorder.limits
        bounded = BoundedAttributes(
            limits.max_link_attributes,
            attributes,
            immutable=True,
            max_value_len=limits.max_attribute_length,
        )
        if self._links is None:
            self._links = []
        self._links.append(Link(context, bounded))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, and UNSET never replaces a status.
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module = kind.__module__
        described: dict[str, types.AnyValue] = {
            "exception.type": f"{module}.{kind.__qualname__}"
            if module and module != "builtins"
            else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            described.update(attributes)
        self.add_event("exception", described, timestamp)

    # -- ending --------------------------------------------------------------------------

    def end(self, end_time: int | None = None) -> None:
        """Hand the finished span to the provider's processor (once; later calls do
        nothing)."""
        if self._end_time is not None:
            return
        self._end_time = end = end_time if end_time is not None else time_ns()
        recorder = self._recorder
        limits = recorder.limits
        recorder.processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=recorder.resource,
                attributes=self._attributes,  # read-only from here: set_* check the end
                events=_bounded_list(limits.max_events, self._events),
                links=_bounded_list(limits.max_links, self._links),
                kind=SpanKind.CONSUMER,
                status=self._status,
                start_time=self._start_time,
                end_time=end,
                instrumentation_scope=recorder.scope,
            )
        )


def _bounded_list(limit: int | None, items: Sequence[Any] | None) -> Sequence[Any]:
    if not items:
        return ()
    return BoundedList.from_seq(limit, items)
