"""The Python CloudEvents SDK (``cloudevents``) against the sidecar over HTTP: it writes
events in binary and structured mode, reads what a webhook subscription pushes (binary
and structured), and its reply reaches ``reply_to``. Each event is compared as the SDK
reads it, attribute by attribute, and on the wire, byte by byte.

The SDK keeps ``time`` as a Python ``datetime`` (microseconds), so these events carry
microseconds; the Go and Java suites check nanoseconds."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from _interop import (
    PAYLOADS,
    Request,
    Spec,
    assert_same_event,
    data_of,
    is_json,
    order,
    post_event,
    raw_sink,
    sidecar,
    sidecar_config,
    spec_from_http,
    webhook,
    with_data,
)
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

pytestmark = pytest.mark.anyio

TIME = "2026-12-07T05:11:30.123456Z"


def python_order(payload: str) -> Spec:
    """ORDER with ``payload``, microsecond time and a subject the HTTP binding must
    percent-encode in a header (the Python SDK decodes it, as the binding says)."""
    return order(payload, time=TIME, subject="orders/42 ünï %20")


def to_sdk(spec: Spec) -> CloudEvent:
    """The Python SDK's event for ``spec``: its data as bytes."""
    attributes: dict[str, Any] = {
        name: spec[name]
        for name in ("id", "source", "type", "datacontenttype", "dataschema", "subject")
        if spec.get(name) is not None
    }
    if spec.get("time") is not None:
        attributes["time"] = datetime.fromisoformat(spec["time"])
    attributes.update(spec.get("extensions") or {})
    return CloudEvent(attributes=attributes, data=data_of(spec))


def spec_of(request: Request) -> Spec:
    """The request's event as the tests' own reader of the binding sees it."""
    return spec_from_http(request.headers, request.body)


def from_sdk(request: Request) -> CloudEvent:
    """The event the Python SDK reads from a webhook request."""
    message = sdk_http.HTTPMessage(headers=dict(request.headers), body=request.body)
    event = sdk_http.from_http(message, JSONFormat())
    assert isinstance(event, CloudEvent)
    return event


def assert_sdk_reads(event: CloudEvent, spec: Spec) -> None:
    """The Python SDK's event is ``spec``: every attribute, and the data it decoded."""
    attributes = event.get_attributes()
    expected = to_sdk(spec).get_attributes()
    for name in sorted(set(attributes) | set(expected)):
        assert attributes.get(name) == expected.get(name), (
            f"{name}: the SDK read {attributes.get(name)!r}, sent {expected.get(name)!r}"
        )
    data, sent = event.get_data(), data_of(spec)
    if isinstance(data, bytes):
        assert data == sent
    elif isinstance(data, str) and not is_json(spec.get("datacontenttype")):
        assert data.encode() == sent
    else:  # the SDK decodes JSON data into Python values
        assert data == (None if sent is None else json.loads(sent))


async def post(url: str, message: sdk_http.HTTPMessage) -> None:
    """POST the SDK's message as it is; the sidecar answers 202."""
    await post_event(url, message.headers, message.body)


def encode(event: CloudEvent, mode: str) -> sdk_http.HTTPMessage:
    """The Python SDK's HTTP message for ``event`` in ``mode``."""
    writer = sdk_http.to_binary if mode == "binary" else sdk_http.to_structured
    return writer(event, JSONFormat())


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("delivered", ["binary", "structured"])
@pytest.mark.parametrize("sent", ["binary", "structured"])
async def test_python_sdk_to_python_sdk_through_a_webhook(
    sent: str, delivered: str, payload: str
) -> None:
    """An event the Python SDK writes (binary or structured) reaches a webhook (binary or
    structured) where the SDK reads every attribute and the data as written, and the
    request carries the data bytes as sent."""
    spec = python_order(payload)
    async with raw_sink() as sink:
        config = sidecar_config([webhook("py", "orders", sink.url, mode=delivered)])
        async with sidecar(config) as s:
            await post(f"{s.http_url}/topics/orders/events", encode(to_sdk(spec), sent))
            request = await sink.next()
    assert_sdk_reads(from_sdk(request), spec)
    assert_same_event(spec_of(request), spec)


REPLY: Spec = with_data(
    {
        "id": "receipt-42",
        "source": "https://billing.example/receipts",
        "type": "com.example.receipt.issued",
        "datacontenttype": "application/json",
        "subject": "receipts/42 ünï",
        "time": "2026-12-07T05:11:31.654321Z",
        "extensions": {"correlation": "order-42"},
    },
    b'{ "receipt" : 42, "paid" : 42.50 }',
)


@pytest.mark.parametrize("reply_mode", ["binary", "structured"])
async def test_a_python_sdk_reply_is_published_to_reply_to(reply_mode: str) -> None:
    """A webhook that answers 200 with an event the Python SDK wrote (binary or
    structured) has it published to ``reply_to``, where the SDK reads it as written."""
    spec = python_order("json-as-written")
    async with raw_sink() as billing, raw_sink() as audit:
        reply = encode(to_sdk(REPLY), reply_mode)
        billing.answer = (200, reply.headers, reply.body)
        config = sidecar_config(
            [
                webhook("billing", "orders", billing.url, reply_to="receipts"),
                webhook("audit", "receipts", audit.url),
            ]
        )
        async with sidecar(config) as s:
            await post(f"{s.http_url}/topics/orders/events", encode(to_sdk(spec), "binary"))
            await billing.next()
            request = await audit.next()
    assert_sdk_reads(from_sdk(request), REPLY)
    assert_same_event(spec_of(request), REPLY)
