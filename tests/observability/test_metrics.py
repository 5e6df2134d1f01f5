"""The admin /metrics page: Prometheus text that a Prometheus parser reads, counting what
the mesh did, with bounded labels, and empty when metrics are off."""

from __future__ import annotations

import threading
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventmesh import Event, Mesh
from eventmesh.bindings.http import to_binary
from eventmesh.observability.histogram import Histogram
from eventmesh.observability.metrics import OTHER, LabelLimit, MeshMetrics, SubscriptionFigures
from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

FREE = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}
NO_WAIT = {"max_attempts": 2, "backoff": {"initial": 0}}

handled: list[str] = []


async def ok(event: Event) -> None:
    """A configured handler that takes every event."""
    handled.append(event.id)


async def failing(event: Event) -> None:
    """A configured handler that refuses every event."""
    raise RuntimeError("refused")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page by name and labels (parsed by prometheus_client)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def labels(subscription: str, topic: str = "orders") -> frozenset[tuple[str, str]]:
    return frozenset({("subscription", subscription), ("topic", topic), ("connector", "default")})


def config(**extra: Any) -> dict[str, Any]:
    subscriptions = [
        {
            "name": "ok",
            "topic": "orders",
            "start": "earliest",
            "sink": {"handler": "test_metrics:ok"},
        },
        {
            "name": "picky",
            "topic": "orders",
            "start": "earliest",
            "filter": {"exact": {"type": "keep"}},
            "sink": {"handler": "test_metrics:ok"},
        },
        {
            "name": "failing",
            "topic": "orders",
            "start": "earliest",
            "delivery": NO_WAIT,
            "sink": {"handler": "test_metrics:failing"},
        },
    ]
    return {"server": FREE, "subscriptions": subscriptions, **extra}


async def publish(session: aiohttp.ClientSession, url: str, events: list[Event]) -> None:
    for event in events:
        headers, body = to_binary(event)
        async with session.post(
            url + "/topics/orders/events", headers=headers, data=body
        ) as response:
            assert response.status == 202


async def test_metrics_count_what_the_mesh_did() -> None:
    """After 5 events over HTTP (3 of the type a filter keeps, 1 a transform drops),
    /metrics reports published, delivered, acked, filtered, dropped, retried and
    dead-lettered counts, the latency histogram's count, and no lag or work in flight."""
    events = [Event(type="keep", source="/t", id=f"k{i}") for i in range(3)]
    events += [Event(type="skip", source="/t", id="s0"), Event(type="drop", source="/t", id="d0")]
    async with Sidecar(config()) as sidecar, aiohttp.ClientSession() as session:
        dropper = await sidecar.mesh.subscribe(
            "orders",
            "dropper",
            handler=ok,
            transform=lambda e: None if e.type == "drop" else e,
            start="earliest",
            name="dropper",
        )
        await publish(session, sidecar.http_url, events)
        subs = {s.name: s for s in sidecar.mesh.subscriptions}
        with anyio.fail_after(10):
            while subs["failing"].stats.dead_lettered < 5 or dropper.stats.delivered < 4:
                await anyio.sleep(0.01)
            while subs["ok"].stats.delivered < 5 or subs["picky"].stats.delivered < 3:
                await anyio.sleep(0.01)
        async with session.get(sidecar.admin_url + "/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            page = samples(await response.text())
    published = frozenset({("topic", "orders"), ("connector", "default")})
    assert page[("eventmesh_events_published_total", published)] == 5
    dlq = frozenset({("topic", "orders.dlq"), ("connector", "default")})
    assert page[("eventmesh_events_published_total", dlq)] == 5
    expected = {
        ("ok", "delivered"): 5,
        ("ok", "acked"): 5,
        ("picky", "delivered"): 3,
        ("picky", "filtered"): 2,
        ("picky", "acked"): 5,
        ("dropper", "dropped"): 1,
        ("dropper", "delivered"): 4,
        ("failing", "received"): 5,
        ("failing", "delivered"): 0,
        ("failing", "retried"): 5,
        ("failing", "dead_lettered"): 5,
        ("failing", "acked"): 5,
    }
    for (sub, counter), value in expected.items():
        assert page[(f"eventmesh_events_{counter}_total", labels(sub))] == value, (sub, counter)
    assert page[("eventmesh_delivery_failures_total", labels("failing"))] == 10
    assert page[("eventmesh_publish_to_ack_seconds_count", labels("ok"))] == 5
    inf = labels("ok") | {("le", "+Inf")}
    assert page[("eventmesh_publish_to_ack_seconds_bucket", inf)] == 5
    for sub in ("ok", "picky", "failing", "dropper"):
        assert page[("eventmesh_consumer_lag", labels(sub))] == 0
        assert page[("eventmesh_deliveries_in_flight", labels(sub))] == 0


async def test_labels_beyond_the_limit_are_summed_under_other() -> None:
    """With max_label_sets 1, the first subscription keeps its labels and the others'
    counts are added up under subscription and topic "other"."""
    async with (
        Sidecar(config(metrics={"max_label_sets": 1})) as sidecar,
        aiohttp.ClientSession() as session,
    ):
        await publish(session, sidecar.http_url, [Event(type="keep", source="/t")])
        subs = {s.name: s for s in sidecar.mesh.subscriptions}
        with anyio.fail_after(10):
            while subs["failing"].stats.dead_lettered < 1 or subs["picky"].stats.delivered < 1:
                await anyio.sleep(0.01)
        async with session.get(sidecar.admin_url + "/metrics") as response:
            page = samples(await response.text())
    delivered = {
        dict(key)["subscription"]: value
        for (name, key), value in page.items()
        if name == "eventmesh_events_delivered_total"
    }
    assert delivered == {"ok": 1, OTHER: 1}  # picky delivered 1, failing 0


async def test_metrics_off_serves_an_empty_page() -> None:
    """With metrics.enabled false the mesh keeps no metrics and /metrics is empty."""
    async with Sidecar(config(metrics={"enabled": False})) as sidecar:
        assert sidecar.mesh.metrics is None
        assert all(s.latency is None for s in sidecar.mesh.subscriptions)
        async with (
            aiohttp.ClientSession() as session,
            session.get(sidecar.admin_url + "/metrics") as response,
        ):
            assert response.status == 200
            assert await response.text() == ""


def test_a_label_limit_admits_the_first_sets_and_folds_the_rest() -> None:
    """LabelLimit keeps the first N label sets it sees, also when seen again, and maps
    every later one to other, keeping the connector."""
    limit = LabelLimit(2)
    assert limit(("a", "t")) == ("a", "t")
    assert limit(("b", "t"), "kafka") == ("b", "t", "kafka")
    assert limit(("c", "t"), "kafka") == (OTHER, OTHER, "kafka")
    assert limit(("a", "t")) == ("a", "t")


def test_a_histogram_counts_each_observation_in_its_bucket() -> None:
    """A value on a bound falls in that bound's bucket; cumulative counts end at +Inf."""
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        histogram.observe(value)
    assert list(histogram.cumulative()) == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4
    assert histogram.sum == pytest.approx(7.65)


async def test_a_deleted_subscription_gives_its_label_set_up() -> None:
    """With max_label_sets 2, once the two labelled subscriptions close, the next ones
    get their own labels rather than other. Before, the label sets admitted stayed
    taken for the life of the process: after 1,000 subscriptions made and deleted,
    every later one was reported as other."""
    async with Mesh({"metrics": {"max_label_sets": 2}}) as mesh:
        assert mesh.metrics is not None
        for name in ("a", "b"):
            async with mesh.subscribe("orders", name, handler=ok, name=name):
                page = samples(mesh.metrics.render())
                assert ("eventmesh_events_received_total", labels(name)) in page
        for name in ("c", "d"):
            await mesh.subscribe("orders", name, handler=ok, name=name)
        await mesh.subscribe("orders", "e", handler=ok, name="e")  # the third live one
        page = samples(mesh.metrics.render())
    received = {
        dict(key)["subscription"]
        for (name, key), _ in page.items()
        if name == "eventmesh_events_received_total"
    }
    assert received == {"c", "d", OTHER}


def test_a_label_limit_frees_the_places_of_sets_no_longer_live() -> None:
    """LabelLimit.retain keeps the live sets admitted, in their places, and frees the
    others' for new sets."""
    limit = LabelLimit(2)
    assert (limit(("a",)), limit(("b",)), limit(("c",))) == (("a",), ("b",), (OTHER,))
    limit.retain([("b",), ("c",), ("x" * 300,)])
    assert (limit(("c",)), limit(("d",)), limit(("b",))) == (("c",), (OTHER,), ("b",))


async def test_a_render_in_a_worker_thread_reads_the_figures_on_the_loop() -> None:
    """MeshMetrics.render called in a worker thread (as the sidecar's /metrics calls it)
    reads every source on the event loop's thread, where the mesh changes them, and
    formats in the thread; called on the loop it reads them there."""
    loop_thread = threading.get_ident()
    readers: set[int] = set()
    histogram = Histogram()
    histogram.observe(0.01)

    def figures() -> list[SubscriptionFigures]:
        readers.add(threading.get_ident())
        counts = dict.fromkeys(("received", "delivered", "failed", "retried"), 1)
        counts |= dict.fromkeys(("dead_lettered", "filtered", "dropped"), 0)
        return [SubscriptionFigures("s", "orders", "default", counts, 0, 0, histogram)]

    def released() -> list[tuple[str, int]]:
        readers.add(threading.get_ident())
        return [("orders", 2)]

    metrics = MeshMetrics(
        subscriptions=figures, released=released, connector_for=lambda topic: "default"
    )
    metrics.published["orders"] = 3
    page = samples(await anyio.to_thread.run_sync(metrics.render))
    assert readers == {loop_thread}
    topic = frozenset({("topic", "orders"), ("connector", "default")})
    assert page[("eventmesh_events_published_total", topic)] == 3
    assert page[("eventmesh_events_released_total", topic)] == 2
    assert page[("eventmesh_events_received_total", labels("s"))] == 1
    assert page[("eventmesh_publish_to_ack_seconds_count", labels("s"))] == 1
    assert samples(metrics.render()) == page
