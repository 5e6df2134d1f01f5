"""The mesh's metrics: counters read at scrape time, Prometheus text out.

Nothing here is called per event except two plain additions: the mesh counts what it
publishes per topic in a dict, and each subscription's dispatcher adds one observation
to its publish-to-ack :class:`~eventmesh.observability.histogram.Histogram`. Everything
else is read, when ``/metrics`` is scraped, from the counters the delivery engine keeps
anyway (``Subscription.stats``), the dispatchers' in-flight counts and the connectors'
lag. One ``prometheus_client`` collector renders all of it (the ``prometheus`` extra,
imported at the first scrape, so a mesh that is never scraped does not load it).
docs/operations.md lists every metric.

A scrape reads the figures on the event loop, where the mesh changes them (cheap
copies: :meth:`MeshMetrics.snapshot`), and formats them, the costly part, in a worker
thread when :meth:`MeshMetrics.render` is called in one (as the sidecar's ``/metrics``).

Labels are ``topic``, ``subscription`` and ``connector``. Topics and subscriptions made
through the API are chosen by users, so each family keeps its own labels for at most
``max_label_sets`` label sets at once, in the order it sees them; the others are summed
under ``other``. A label set that a scrape no longer lists (its subscription or function
closed) gives its place up to the next one. A label value is cut to
``MAX_LABEL_LENGTH`` characters (names are bounded where they are made; this is the
metrics' own guard), so what one scrape renders is bounded whatever clients name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

import anyio.from_thread

from eventmesh._imports import needs_extra
from eventmesh.observability.histogram import Histogram

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = [
    "MAX_LABEL_LENGTH",
    "OTHER",
    "FunctionFigures",
    "LabelLimit",
    "MeshMetrics",
    "Scrape",
    "SubscriptionFigures",
]

_T = TypeVar("_T")

OTHER: Final = "other"
"""The label value that stands for every topic or subscription beyond the limit."""
MAX_LABEL_LENGTH: Final = 256
"""Characters of a label value; a longer topic, subscription or function name is cut."""

_SUBSCRIPTION_COUNTERS: Final = (
    ("received", "eventmesh_events_received", "events fetched from the connector"),
    ("delivered", "eventmesh_events_delivered", "events the subscription's sink handled"),
    (
        "acked",
        "eventmesh_events_acked",
        "events acked to the connector: delivered, filtered, dropped or dead-lettered",
    ),
    ("failed", "eventmesh_delivery_failures", "delivery attempts that failed"),
    ("retried", "eventmesh_events_retried", "delivery attempts that were retries"),
    (
        "dead_lettered",
        "eventmesh_events_dead_lettered",
        "events sent to the dead-letter topic (or dropped without one)",
    ),
    ("filtered", "eventmesh_events_filtered", "events the subscription's filter left out"),
    ("dropped", "eventmesh_events_dropped", "events the subscription's transform dropped"),
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
    """Admits up to ``limit`` label sets at once, in the order it is shown them; the
    others become ``other``.

    An admitted set keeps its place while it is live: :meth:`retain`, called with the
    sets a scrape lists, gives up the places of those gone (a subscription deleted), so
    a process that made and deleted ``limit`` subscriptions still labels the next ones.
    Each name is cut to :data:`MAX_LABEL_LENGTH` characters first. The connector label
    (from the configuration, so bounded) is kept as it is.
    """

    __slots__ = ("_admitted", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._admitted: set[tuple[str, ...]] = set()

    def __call__(self, names: tuple[str, ...], connector: str | None = None) -> tuple[str, ...]:
        """``names`` (plus ``connector``) if admitted, else ``other`` for each name."""
        names = _cut(names)
        if names in self._admitted:
            pass
        elif len(self._admitted) < self.limit:
            self._admitted.add(names)
        else:
            names = (OTHER,) * len(names)
        return names if connector is None else (*names, connector)

    def retain(self, live: Iterable[tuple[str, ...]]) -> None:
        """Keep admitted only the sets among ``live`` (all those a scrape is about to
        label): the places of the others are free for new sets."""
        if self._admitted:
            self._admitted.intersection_update({_cut(names) for names in live})


def _cut(names: tuple[str, ...]) -> tuple[str, ...]:
    if any(len(name) > MAX_LABEL_LENGTH for name in names):
        return tuple(name[:MAX_LABEL_LENGTH] for name in names)
    return names


class Scrape(NamedTuple):
    """Every figure of one scrape, read on the event loop (:meth:`MeshMetrics.snapshot`):
    copies, which the mesh no longer changes, so they can be formatted in a thread."""

    subscriptions: list[SubscriptionFigures]
    functions: list[FunctionFigures]
    published: list[tuple[str, int]]
    released: list[tuple[str, int]]
    deduplicated: list[tuple[str, int, int]]
    requests: dict[str, int]


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
    """One mesh's metrics and their Prometheus rendering.

    ``subscriptions`` and ``functions`` list the running subscriptions' and functions'
    figures at each scrape; ``connector_for`` names the connector of a topic. The mesh
    adds to :attr:`published` per topic. The sources are called on the event loop only
    (:meth:`snapshot`); ``connector_for`` may be called from a thread.
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
        self._registry: CollectorRegistry | None = None
        self._rendering: Scrape | None = None
        """The figures :meth:`render` is formatting, for the collector."""
        self._lock = threading.Lock()
        """One rendering at a time: it sets the label limits and :attr:`_rendering`."""

    # -- rendering -----------------------------------------------------------------------

    def snapshot(self) -> Scrape:
        """Every figure, read now: call it on the event loop, where the mesh changes them.
        A copy of each (the histograms' too), cheap beside formatting them."""
        return Scrape(
            subscriptions=[
                figures._replace(counts=dict(figures.counts), latency=_copy(figures.latency))
                for figures in self._subscriptions()
            ],
            functions=[
                figures._replace(duration=_copy(figures.duration)) for figures in self._functions()
            ],
            published=list(self.published.items()),
            released=list(self._released()),
            deduplicated=list(self._deduplicated()),
            requests=dict(self._requests()),
        )

    def render(self, scrape: Scrape | None = None) -> str:
        """Every metric in the Prometheus text format (the admin ``/metrics`` page), from
        ``scrape`` or, without one, from the figures now. Raises MissingExtraError
        without the ``prometheus`` extra.

        Call it on the event loop, or in a worker thread of it
        (``anyio.to_thread.run_sync``): then only the :meth:`snapshot` runs on the loop
        (through ``anyio.from_thread``) and the formatting, most of the cost, in the
        thread. Renderings from several threads take turns.
        """
        with needs_extra("the /metrics page"):
            from prometheus_client import CollectorRegistry, generate_latest
        if scrape is None:
            scrape = _on_the_loop(self.snapshot)
        with self._lock:
            if self._registry is None:
                self._registry = CollectorRegistry(auto_describe=False)
                self._registry.register(_Collector(self))
            self._rendering = scrape
            try:
                return generate_latest(self._registry).decode()
            finally:
                self._rendering = None

    def families(self, scrape: Scrape | None = None) -> Iterator[Metric]:
        """Every metric family of ``scrape``, or of the figures now (the collector behind
        :meth:`render`)."""
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        if scrape is None:
            scrape = self.snapshot()
        subscriptions, functions = scrape.subscriptions, scrape.functions
        deduplicated = scrape.deduplicated
        self._topic_labels.retain(
            [(name,) for name, _ in scrape.published]
            + [(name,) for name, _ in scrape.released]
            + [(name,) for name, _, _ in deduplicated]
        )
        self._subscription_labels.retain((f.subscription, f.topic) for f in subscriptions)
        self._function_labels.retain((f.function,) for f in functions)
        topic = ["topic", "connector"]
        yield _filled(
            CounterMetricFamily(
                "eventmesh_events_published",
                "events stored on a topic by publish (including replies and dead letters)",
                labels=topic,
            ),
            self._by_topic(scrape.published),
        )
        yield _filled(
            CounterMetricFamily(
                "eventmesh_events_released",
                "events a connector released under a retention limit (max_age, "
                "when_full: drop_oldest) before every group read them",
                labels=topic,
            ),
            self._by_topic(scrape.released),
        )
        yield _filled(
            CounterMetricFamily(
                "eventmesh_events_deduplicated",
                "events not stored because the topic's dedupe window held their "
                "source and id (the producer was answered as if stored)",
                labels=topic,
            ),
            self._by_topic((name, duplicates) for name, duplicates, _ in deduplicated),
        )
        yield _filled(
            CounterMetricFamily(
                "eventmesh_dedupe_forgotten",
                "keys a topic's dedupe window forgot before the window ended, to "
                "stay within max_entries",
                labels=topic,
            ),
            self._by_topic((name, forgot) for name, _, forgot in deduplicated),
        )
        labels = list(_SUBSCRIPTION_LABELS)
        for field, name, description in _SUBSCRIPTION_COUNTERS:
            yield _filled(
                CounterMetricFamily(name, description, labels=labels),
                ((self._labelled(f), _count(f.counts, field)) for f in subscriptions),
            )
        yield _filled(
            GaugeMetricFamily(
                "eventmesh_deliveries_in_flight",
                "deliveries handed to a subscription's handler and not yet settled",
                labels=labels,
            ),
            ((self._labelled(f), f.in_flight) for f in subscriptions if f.in_flight is not None),
        )
        yield _filled(
            GaugeMetricFamily(
                "eventmesh_consumer_lag",
                "events stored but not yet acked by a subscription's group "
                "(where the connector can tell)",
                labels=labels,
            ),
            ((self._labelled(f), f.lag) for f in subscriptions if f.lag is not None),
        )
        for field, description in (
            ("invocations", "calls of a serverless function"),
            (
                "errors",
                "calls of a serverless function that failed (raised, timed out, "
                "or returned what cannot be published)",
            ),
            ("timeouts", "calls of a serverless function cut short by its timeout"),
        ):
            yield _filled(
                CounterMetricFamily(
                    f"eventmesh_function_{field}", description, labels=["function"]
                ),
                ((self._function_labels((f.function,)), getattr(f, field)) for f in functions),
            )
        counts = scrape.requests
        yield _filled(
            CounterMetricFamily(
                "eventmesh_requests",
                "requests that waited for a reply, by outcome (answered, "
                "timed_out), and replies dropped as late (after the timeout, duplicates)",
                labels=["outcome"],
            ),
            (((k,), counts[k]) for k in ("answered", "timed_out", "late") if k in counts),
        )
        pending = GaugeMetricFamily(
            "eventmesh_requests_pending", "requests waiting for their reply"
        )
        if "pending" in counts:
            pending.add_metric([], counts["pending"])
        yield pending
        yield from self._histograms(subscriptions, functions)

    # -- labels --------------------------------------------------------------------------

    def _labelled(self, figures: SubscriptionFigures) -> tuple[str, ...]:
        return self._subscription_labels((figures.subscription, figures.topic), figures.connector)

    def _by_topic(self, counts: Iterable[tuple[str, int]]) -> Iterator[tuple[tuple[str, ...], int]]:
        for topic, count in counts:
            yield self._topic_labels((topic,), self._connector_for(topic)), count

    def _histograms(
        self, subscriptions: list[SubscriptionFigures], functions: list[FunctionFigures]
    ) -> Iterator[Metric]:
        from prometheus_client.metrics_core import HistogramMetricFamily

        latency = HistogramMetricFamily(
            "eventmesh_publish_to_ack_seconds",
            "seconds from an event being stored to its delivery being acked",
            labels=list(_SUBSCRIPTION_LABELS),
        )
        folded: dict[tuple[str, ...], Histogram] = {}
        for figures in subscriptions:
            if figures.latency is not None:
                _merge_into(folded, self._labelled(figures), figures.latency)
        for key, histogram in folded.items():
            latency.add_metric(list(key), list(histogram.cumulative()), histogram.sum)
        yield latency
        duration = HistogramMetricFamily(
            "eventmesh_function_duration_seconds",
            "seconds one call of a serverless function took",
            labels=["function"],
        )
        folded = {}
        for function in functions:
            if function.duration is not None:
                _merge_into(folded, self._function_labels((function.function,)), function.duration)
        for key, histogram in folded.items():
            duration.add_metric(list(key), list(histogram.cumulative()), histogram.sum)
        yield duration


def _filled(family: Any, values: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    """``family`` with one sample per label set; those folded into ``other`` are summed."""
    totals: dict[tuple[str, ...], float] = {}
    for labels, value in values:
        totals[labels] = totals.get(labels, 0) + value
    for labels, value in totals.items():
        family.add_metric(list(labels), value)
    return family  # type: ignore[no-any-return]


def _count(counts: Mapping[str, int], field: str) -> int:
    if field == "acked":
        settled = ("delivered", "filtered", "dropped", "dead_lettered")
        return sum(counts[name] for name in settled)
    return counts[field]


def _copy(histogram: Histogram | None) -> Histogram | None:
    if histogram is None:
        return None
    copy = Histogram(histogram.bounds)
    copy.merge(histogram)
    return copy


def _on_the_loop(read: Callable[[], _T]) -> _T:
    """``read()`` on the event loop: sent there from an anyio worker thread, called here
    anywhere else (the loop's own thread, or no loop at all)."""
    try:
        anyio.from_thread.check_cancelled()  # raises RuntimeError outside a worker thread
    except RuntimeError:
        return read()
    return anyio.from_thread.run_sync(read)


def _merge_into(
    folded: dict[tuple[str, ...], Histogram], key: tuple[str, ...], histogram: Histogram
) -> None:
    total = folded.get(key)
    if total is None:
        total = folded[key] = Histogram(histogram.bounds)
    total.merge(histogram)


class _Collector:
    """The one collector of a mesh's registry: reads every family at each scrape."""

    def __init__(self, metrics: MeshMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families(self._metrics._rendering)

    def describe(self) -> list[Any]:
        return []
