"""Tracing over a real Kafka broker: an event published over HTTP, stored in Kafka,
delivered to a webhook whose reply is stored and answered by a function whose answer is
stored and delivered, is one trace; the context travels in the records' ce_traceparent
header."""

from __future__ import annotations

import uuid

import pytest

from eventmesh.server.sidecar import Sidecar
from eventmesh.testing.tracing import assert_one_trace, chain, recording_provider, run_chain

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]


async def test_a_publish_its_webhook_delivery_and_the_reply_through_kafka_are_one_trace(
    kafka_bootstrap: str,
) -> None:
    """HTTP publish, broker store, webhook delivery, the reply's store, a function answering
    it, and the answer's store and delivery to a subscriber share one trace, each under the
    span that caused it; the subscription's lag comes down to 0."""
    orders = f"test-trace-{uuid.uuid4().hex[:12]}"
    kafka = {
        "type": "kafka",
        "bootstrap_servers": kafka_bootstrap,
        "partitions": 2,
        "request_timeout_ms": 10_000,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 300,
    }
    provider, exporter = recording_provider()
    got, _ = await run_chain({"default": kafka}, Sidecar, provider, orders=orders)
    spans = assert_one_trace(exporter.get_finished_spans(), chain(orders))
    assert spans[f"publish {orders}"].parent is None
    assert spans[f"store {orders}"].attributes is not None
    assert spans[f"store {orders}"].attributes["eventmesh.connector"] == "default"
    assert got[0].type == "order.answered"
