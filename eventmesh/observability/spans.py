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

import threading
import traceback
from collections.abc import Mapping
from time import time_ns
from types import MappingProxyType, TracebackType
from typing import Any, Final

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util import types

__all__ = ["DeliveryRecorder", "DeliverySpan"]

_UNSET: Final = Status(StatusCode.UNSET)

QUIET_AT_START: Final = (BatchSpanProcessor, SimpleSpanProcessor)
"""The processors a :class:`DeliverySpan` may be given: they do nothing when a span
starts or is ending, the two calls it does not make. Any other processor gets the SDK's
spans."""


class DeliveryRecorder:
    """What the delivery spans of one mesh-built provider share: where they go when they
    end (one of :data:`QUIET_AT_START`), the provider's resource and limits, and the
    mesh's instrumentation scope."""

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

    ``attributes`` are the mesh's own: kept as given when no limit could cut them, else
    checked and bounded as the SDK does, as is everything the handler sets. A lock makes
    a change from another thread (a sync handler's) and the end one after the other.
    The current span during a delivery, it reads as the SDK's span does (``name``,
    ``attributes``, ``status``, ...), but is not an instance of the SDK's class.
    """

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_links",
        "_lock",
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
        limits = recorder.limits
        count = limits.max_span_attributes
        self._attributes: dict[str, Any] | BoundedAttributes = (
            attributes
            if limits.max_span_attribute_length is None
            and (count is None or len(attributes) <= count)
            else self._bounded(attributes)
        )
        self._events: BoundedList[SpanEvent] | None = None
        self._links: BoundedList[Link] | None = None
        self._status = _UNSET
        self._lock = threading.Lock()
        self._start_time = time_ns()
        self._end_time: int | None = None

    # -- reading -------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> SpanKind:
        return SpanKind.CONSUMER

    @property
    def parent(self) -> SpanContext:
        return self._parent

    @property
    def attributes(self) -> Mapping[str, Any]:
        return MappingProxyType(self._attributes)

    @property
    def status(self) -> Status:
        return self._status

    @property
    def start_time(self) -> int:
        return self._start_time

    @property
    def end_time(self) -> int | None:
        return self._end_time

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'

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
        with self._lock:
            if self._end_time is None:
                checked = self._checked_attributes()
                for key, value in attributes.items():
                    checked[key] = value

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        with self._lock:
            if self._end_time is None:
                self._checked_attributes()[key] = value

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        limits = self._recorder.limits
        bounded = BoundedAttributes(
            limits.max_event_attributes,
            attributes,
            immutable=True,
            max_value_len=limits.max_attribute_length,
        )
        event = SpanEvent(name, bounded, timestamp)
        with self._lock:
            if self._end_time is None:
                if self._events is None:
                    self._events = BoundedList(limits.max_events)
                self._events.append(event)

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        # As the SDK: a link needs a valid context, attributes or a trace state.
        if not (context.is_valid or attributes or context.trace_state):
            return
        limits = self._recorder.limits
        bounded = BoundedAttributes(
            limits.max_link_attributes,
            attributes,
            immutable=True,
            max_value_len=limits.max_attribute_length,
        )
        with self._lock:
            if self._end_time is None:
                if self._links is None:
                    self._links = BoundedList(limits.max_links)
                self._links.append(Link(context, bounded))

    def update_name(self, name: str) -> None:
        with self._lock:
            if self._end_time is None:
                self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if isinstance(status, StatusCode):
            status = Status(status, description)
        with self._lock:
            # As the SDK: OK is final, and UNSET never replaces a status.
            if (
                self._end_time is None
                and self._status.status_code is not StatusCode.OK
                and status.status_code is not StatusCode.UNSET
            ):
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        # As the SDK's span used as a context manager: an escaping exception is recorded.
        if exc_val is not None and exc_type is not None and self.is_recording():
            self.record_exception(exc_val, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{exc_type.__name__}: {exc_val}"))
        super().__exit__(exc_type, exc_val, exc_tb)

    # -- ending --------------------------------------------------------------------------

    def end(self, end_time: int | None = None) -> None:
        """Hand the finished span to the provider's processor (once; later calls do
        nothing, and nothing changes it after this)."""
        with self._lock:
            if self._end_time is not None:
                return
            self._end_time = end = end_time if end_time is not None else time_ns()
        recorder = self._recorder
        recorder.processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=recorder.resource,
                attributes=self._attributes,
                events=self._events if self._events is not None else (),
                links=self._links if self._links is not None else (),
                kind=SpanKind.CONSUMER,
                status=self._status,
                start_time=self._start_time,
                end_time=end,
                instrumentation_scope=recorder.scope,
            )
        )
