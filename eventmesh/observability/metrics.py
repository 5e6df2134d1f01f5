"""The mesh's metrics: OpenTelemetry instruments read at scrape time, Prometheus text out.

Nothing here is called per event except two plain additions: the mesh counts what it
publishes per topic in a dict, and each subscription's dispatcher adds one observation
to its publish-to-ack :class:`~eventmesh.observability.histogram.Histogram`. Everything
else is an *observable* OpenTelemetry instrument whose callback reads the counters the
delivery engine keeps anyway (``Subscription.stats``), the dispatchers' in-flight counts
and the connectors' lag, when ``/metrics`` is scraped. The OpenTelemetry SDK's
Prometheus reader renders those; the histograms are rendered beside them into the same
``prometheus_client`` registry. docs/operations.md lists every metric.

Labels are ``topic``, ``subscription`` and ``connector``. Topics and subscriptions made
through the API are chosen by users, so each family keeps its own labels for the first
``max_label_sets`` label sets it sees; later ones are summed under ``other``. A label
value is cut to ``MAX_LABEL_LENGTH`` characters (names are bounded where they are made;
this is the metrics' own guard), so what one scrape renders is bounded whatever clients
name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, NamedTuple

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

from eventmesh._version import __version__
from eventmesh.observability.histogram import Histogram

__all__ = [
    "MAX_LABEL_LENGTH",
    "OTHER",
    "FunctionFigures",
    "LabelLimit",
    "MeshMetrics",
    "SubscriptionFigures",
]

OTHER: Final = "other"
"""The label value that stands for every topic or subscription beyond the limit."""
MAX_LABEL_LENGTH: Final = 256
"""Characters of a label value; a longer topic, subscription or function name is cut."""

_SUBSCRIPTION_COUNTERS: Final = (
    ("received", "eventmesh.events.received", "events fetched from the connector"),
    ("delivered", "eventmesh.events.delivered", "events the subscription's sink handled"),
    (
        "acked",
        "eventmesh.events.acked",
        "events acked to the connector: delivered, filtered, dropped or dead-lettered",
    ),
    ("failed", "eventmesh.delivery.failures", "delivery attempts that failed"),
    ("retried", "eventmesh.events.retried", "delivery attempts that were retries"),
    (
        "dead_lettered",
        "eventmesh.events.dead_lettered",
        "events sent to the dead-letter topic (or dropped without one)",
    ),
    ("filtered", "eventmesh.events.filtered", "events the subscription's filter left out"),
    ("dropped", "eventmesh.events.dropped", "events the subscription's transform dropped"),
)
_SUBSCRIPTION_LABELS: Final = ("subscription", "topic", "connector")


class SubscriptionFigures(NamedTuple):
    """What one running subscription reports at a scrape."""

    subscription: str
    topic: str
    connector: str
    counts: Mapping[str, int]
    """``DeliveryStats.as_dict()``: received, delivered, failed, retried, ..."""
    in_flight: int | None
    """Deliveries handed to the handler and not yet settled (None: not a handler)."""
    lag: int | None
    """Events stored but not yet acked by the group, when the connector can tell."""
    latency: Histogram | None
    """Seconds from stored to acked, per delivered event."""


class FunctionFigures(NamedTuple):
    """What one running serverless function reports at a scrape."""

    function: str
    invocations: int
    errors: int
    """Calls that raised, timed out or returned what cannot be published."""
    timeouts: int
    duration: Histogram | None
    """Seconds per call."""


class LabelLimit:
    """Admits the first ``limit`` label sets it is shown; later ones become ``other``.

    Each name is cut to :data:`MAX_LABEL_LENGTH` characters first. The connector label
    (from the configuration, so bounded) is kept as it is.
    """

    __slots__ = ("_admitted", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._admitted: set[tuple[str, ...]] = set()

    def __call__(self, names: tuple[str, ...], connector: str | None = None) -> tuple[str, ...]:
        """``names`` (plus ``connector``) if admitted, else ``other`` for each name."""
        if any(len(name) > MAX_LABEL_LENGTH for name in names):
            names = tuple(name[:MAX_LABEL_LENGTH] for name in names)
        if names in self._admitted:
            pass
        elif len(self._admitted) < self.limit:
            self._admitted.add(names)
        else:
            names = (OTHER,) * len(names)
        return names if connector is None else (*names, connector)


SubscriptionSource = Callable[[], Iterable[SubscriptionFigures]]
"""Lists the running subscriptions' figures (the mesh's ``subscriptions``)."""
FunctionSource = Callable[[], Iterable[FunctionFigures]]
"""Lists the running functions' figures (the mesh's ``functions``)."""
ReleasedSource = Callable[[], Iterable[tuple[str, int]]]
"""Lists ``(topic, count)``: events a connector released under a retention limit before
every group read them (the memory connector's ``released()``)."""
DedupeSource = Callable[[], Iterable[tuple[str, int, int]]]
"""Lists ``(topic, duplicates, forgotten)`` for each topic with ``dedupe:``: events
dropped as already stored, and keys forgotten early to stay within ``max_entries``."""
RequestSource = Callable[[], Mapping[str, int]]
"""The request-reply counts: ``answered``, ``timed_out``, ``late`` and ``pending``."""


class MeshMetrics:
    """One mesh's meter provider, instruments and Prometheus rendering.

    ``subscriptions`` and ``functions`` list the running subscriptions' and functions'
    figures at each scrape; ``connector_for`` names the connector of a topic. The mesh
    adds to :attr:`published` per topic.
    """

    def __init__(
        self,
        *,
        subscriptions: SubscriptionSource,
        connector_for: Callable[[str], str],
        functions: FunctionSource = tuple,
        released: ReleasedSource = tuple,
        deduplicated: DedupeSource = tuple,
        requests: RequestSource = dict,
        max_label_sets: int = 1000,
    ) -> None:
        self._subscriptions = subscriptions
        self._requests = requests
        self._functions = functions
        self._released = released
        self._deduplicated = deduplicated
        self._connector_for = connector_for
        self.published: dict[str, int] = {}
        """Events stored per topic (the mesh adds to it on every publish)."""
        self._topic_labels = LabelLimit(max_label_sets)
        self._subscription_labels = LabelLimit(max_label_sets)
        self._function_labels = LabelLimit(max_label_sets)
        self._snapshot: list[SubscriptionFigures] = []
        self._function_snapshot: list[FunctionFigures] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self._reader = PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=self.registry
        )
        self.provider = MeterProvider(metric_readers=[self._reader], shutdown_on_exit=False)
        self._define_instruments()
        self.registry.register(_HistogramCollector(self))

    # -- rendering -----------------------------------------------------------------------

    def render(self) -> str:
        """Every metric in the Prometheus text format (the admin ``/metrics`` page)."""
        self._snapshot = list(self._subscriptions())
        self._function_snapshot = list(self._functions())
        try:
            return generate_latest(self.registry).decode()
        finally:
            self._snapshot = []
            self._function_snapshot = []

    # -- instruments ---------------------------------------------------------------------

    def _define_instruments(self) -> None:
        meter = self.provider.get_meter("eventmesh", __version__)
        meter.create_observable_counter(
            "eventmesh.events.published",
            callbacks=[self._observe_published],
            description="events stored on a topic by publish (including replies and dead letters)",
        )
        meter.create_observable_counter(
            "eventmesh.events.released",
            callbacks=[self._observe_released],
            description="events a connector released under a retention limit (max_age, "
            "when_full: drop_oldest) before every group read them",
        )
        meter.create_observable_counter(
            "eventmesh.events.deduplicated",
            callbacks=[self._dedupe_callback(forgotten=False)],
            description="events not stored because the topic's dedupe window held their "
            "source and id (the producer was answered as if stored)",
        )
        meter.create_observable_counter(
            "eventmesh.dedupe.forgotten",
            callbacks=[self._dedupe_callback(forgotten=True)],
            description="keys a topic's dedupe window forgot before the window ended, to "
            "stay within max_entries",
        )
        for field, name, description in _SUBSCRIPTION_COUNTERS:
            meter.create_observable_counter(
                name, callbacks=[self._counter_callback(field)], description=description
            )
        meter.create_observable_gauge(
            "eventmesh.deliveries.in_flight",
            callbacks=[self._observe_in_flight],
            description="deliveries handed to a subscription's handler and not yet settled",
        )
        meter.create_observable_gauge(
            "eventmesh.consumer.lag",
            callbacks=[self._observe_lag],
            description="events stored but not yet acked by a subscription's group "
            "(where the connector can tell)",
        )
        meter.create_observable_counter(
            "eventmesh.function.invocations",
            callbacks=[self._function_callback("invocations")],
            description="calls of a serverless function",
        )
        meter.create_observable_counter(
            "eventmesh.function.errors",
            callbacks=[self._function_callback("errors")],
            description="calls of a serverless function that failed (raised, timed out, "
            "or returned what cannot be published)",
        )
        meter.create_observable_counter(
            "eventmesh.function.timeouts",
            callbacks=[self._function_callback("timeouts")],
            description="calls of a serverless function cut short by its timeout",
        )
        meter.create_observable_counter(
            "eventmesh.requests",
            callbacks=[self._observe_requests],
            description="requests that waited for a reply, by outcome (answered, "
            "timed_out), and replies dropped as late (after the timeout, duplicates)",
        )
        meter.create_observable_gauge(
            "eventmesh.requests.pending",
            callbacks=[self._observe_pending_requests],
            description="requests waiting for their reply",
        )

    def _labelled(self, figures: SubscriptionFigures) -> dict[str, str]:
        labels = self._subscription_labels((figures.subscription, figures.topic), figures.connector)
        return dict(zip(_SUBSCRIPTION_LABELS, labels, strict=True))

    def _summed(self, values: Iterable[tuple[dict[str, str], int]]) -> list[Observation]:
        """One observation per label set: those folded into ``other`` are added up."""
        totals: dict[tuple[tuple[str, str], ...], int] = {}
        for labels, value in values:
            key = tuple(labels.items())
            totals[key] = totals.get(key, 0) + value
        return [Observation(value, dict(key)) for key, value in totals.items()]

    def _observe_published(self, options: CallbackOptions) -> Iterator[Observation]:
        values = []
        for topic, count in list(self.published.items()):
            (label, connector) = self._topic_labels((topic,), self._connector_for(topic))
            values.append(({"topic": label, "connector": connector}, count))
        yield from self._summed(values)

    def _observe_released(self, options: CallbackOptions) -> list[Observation]:
        values = []
        for topic, count in self._released():
            (label, connector) = self._topic_labels((topic,), self._connector_for(topic))
            values.append(({"topic": label, "connector": connector}, count))
        return self._summed(values)

    def _observe_requests(self, options: CallbackOptions) -> list[Observation]:
        counts = self._requests()
        outcomes = ("answered", "timed_out", "late")
        return [Observation(counts[k], {"outcome": k}) for k in outcomes if k in counts]

    def _observe_pending_requests(self, options: CallbackOptions) -> list[Observation]:
        pending = self._requests().get("pending")
        return [] if pending is None else [Observation(pending)]

    def _dedupe_callback(
        self, *, forgotten: bool
    ) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(options: CallbackOptions) -> list[Observation]:
            values = []
            for topic, duplicates, forgot in self._deduplicated():
                (label, connector) = self._topic_labels((topic,), self._connector_for(topic))
                count = forgot if forgotten else duplicates
                values.append(({"topic": label, "connector": connector}, count))
            return self._summed(values)

        return observe

    def _counter_callback(self, field: str) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(options: CallbackOptions) -> list[Observation]:
            return self._summed(
                (self._labelled(f), _count(f.counts, field)) for f in self._snapshot
            )

        return observe

    def _observe_in_flight(self, options: CallbackOptions) -> list[Observation]:
        return self._summed(
            (self._labelled(f), f.in_flight) for f in self._snapshot if f.in_flight is not None
        )

    def _observe_lag(self, options: CallbackOptions) -> list[Observation]:
        return self._summed((self._labelled(f), f.lag) for f in self._snapshot if f.lag is not None)

    def _function_callback(self, field: str) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(options: CallbackOptions) -> list[Observation]:
            return self._summed(
                ({"function": self._function_labels((f.function,))[0]}, getattr(f, field))
                for f in self._function_snapshot
            )

        return observe

    def _histograms(self) -> Iterator[Metric]:
        latency = HistogramMetricFamily(
            "eventmesh_publish_to_ack_seconds",
            "seconds from an event being stored to its delivery being acked",
            labels=list(_SUBSCRIPTION_LABELS),
        )
        folded: dict[tuple[str, ...], Histogram] = {}
        for figures in self._snapshot:
            if figures.latency is not None:
                key = tuple(self._labelled(figures).values())
                _merge_into(folded, key, figures.latency)
        for key, histogram in folded.items():
            latency.add_metric(list(key), list(histogram.cumulative()), histogram.sum)
        yield latency
        duration = HistogramMetricFamily(
            "eventmesh_function_duration_seconds",
            "seconds one call of a serverless function took",
            labels=["function"],
        )
        folded = {}
        for function in self._function_snapshot:
            if function.duration is not None:
                _merge_into(folded, self._function_labels((function.function,)), function.duration)
        for key, histogram in folded.items():
            duration.add_metric(list(key), list(histogram.cumulative()), histogram.sum)
        yield duration


def _count(counts: Mapping[str, int], field: str) -> int:
    if field == "acked":
        settled = ("delivered", "filtered", "dropped", "dead_lettered")
        return sum(counts[name] for name in settled)
    return counts[field]


def _merge_into(
    folded: dict[tuple[str, ...], Histogram], key: tuple[str, ...], histogram: Histogram
) -> None:
    total = folded.get(key)
    if total is None:
        total = folded[key] = Histogram(histogram.bounds)
    total.merge(histogram)


class _HistogramCollector:
    """Renders the mesh's own histograms into the Prometheus registry."""

    def __init__(self, metrics: MeshMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics._histograms()

    def describe(self) -> list[Any]:
        return []
