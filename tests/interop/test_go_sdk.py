"""The CloudEvents Go SDK (github.com/cloudevents/sdk-go/v2) against the sidecar over HTTP:
its client sends in binary and structured mode, its receiver is a webhook sink, and the
reply it answers with is published to the subscription's ``reply_to`` topic. Each event
is compared field by field, with its data bytes, as the Go SDK read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _interop import (
    ORDER,
    PAYLOADS,
    Spec,
    assert_same_event,
    go_receiver,
    order,
    run,
    sidecar,
    sidecar_config,
    webhook,
    with_data,
)

pytestmark = pytest.mark.anyio


async def go_send(go_sdk: list[str], url: str, mode: str, event: Spec) -> None:
    """Send ``event`` with the Go SDK's HTTP client in ``mode``; the sidecar answers 202."""
    out = await run([*go_sdk, "send", url, mode], json.dumps(event).encode())
    assert json.loads(out.strip().splitlines()[-1]) == {"status": 202}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("delivered", ["binary", "structured"])
@pytest.mark.parametrize("sent", ["binary", "structured"])
async def test_go_client_to_go_receiver_keeps_every_attribute_and_byte(
    go_sdk: list[str], tmp_path: Path, sent: str, delivered: str, payload: str
) -> None:
    """An event the Go SDK sends (binary or structured) reaches a Go SDK webhook (binary
    or structured) with every attribute, extension and data byte as sent, and time to
    the nanosecond."""
    event = order(payload)
    async with go_receiver(go_sdk, None, tmp_path) as (url, receiver):
        config = sidecar_config([webhook("go", "orders", url, mode=delivered)])
        async with sidecar(config) as running:
            await go_send(go_sdk, f"{running.http_url}/topics/orders/events", sent, event)
            assert_same_event(await receiver.spec(), event)


@pytest.mark.parametrize("sent", ["binary", "structured"])
@pytest.mark.parametrize(
    "sink", [{"mode": "structured"}, {"mode": "binary", "header_encoding": "raw"}]
)
async def test_a_non_ascii_subject_reaches_the_go_receiver_unescaped(
    go_sdk: list[str], tmp_path: Path, sent: str, sink: dict[str, str]
) -> None:
    """A subject with a space and non-ASCII letters, sent by the Go SDK, reaches a Go SDK
    webhook as it was written when the subscription delivers in structured mode or with
    ``header_encoding: raw`` (the Go SDK does not percent-decode ce- headers)."""
    event = with_data({**ORDER, "subject": "orders/42 ünï"}, b'{"n": 1}')
    async with go_receiver(go_sdk, None, tmp_path) as (url, receiver):
        config = sidecar_config([webhook("go", "orders", url, **sink)])
        async with sidecar(config) as running:
            await go_send(go_sdk, f"{running.http_url}/topics/orders/events", sent, event)
            assert_same_event(await receiver.spec(), event)


REPLY: Spec = with_data(
    {
        "specversion": "1.0",
        "id": "receipt-42",
        "source": "https://billing.example/receipts",
        "type": "com.example.receipt.issued",
        "datacontenttype": "application/json",
        "subject": "receipts/42",
        "time": "2026-12-07T05:11:31.987654321Z",
        "extensions": {"correlation": "order-42"},
    },
    b'{ "receipt" : 42, "paid" : 42.50 }',
)


async def test_a_go_receivers_reply_is_published_to_reply_to(
    go_sdk: list[str], tmp_path: Path
) -> None:
    """The event a Go SDK webhook answers with is published to the subscription's
    ``reply_to`` topic as the Go SDK wrote it: a second Go SDK webhook on that topic reads
    every attribute and data byte of the reply."""
    event = order("json-as-written")
    async with (
        go_receiver(go_sdk, REPLY, tmp_path) as (billing, replier),
        go_receiver(go_sdk, None, tmp_path) as (audit, auditor),
    ):
        config = sidecar_config(
            [
                webhook("billing", "orders", billing, reply_to="receipts"),
                webhook("audit", "receipts", audit),
            ]
        )
        async with sidecar(config) as running:
            await go_send(go_sdk, f"{running.http_url}/topics/orders/events", "binary", event)
            assert_same_event(await replier.spec(), event)
            assert_same_event(await auditor.spec(), REPLY)


async def test_a_body_that_is_not_json_under_a_json_type_is_refused_to_the_go_client(
    go_sdk: list[str],
) -> None:
    """The Go SDK's client sending a binary-mode body that is not JSON under
    ``application/json`` is answered 400 (refused, where it used to be stored as a JSON
    string). In structured mode the SDK sends such bytes as ``data_base64``, which is
    binary data and no JSON to check."""
    event = with_data({**ORDER, "id": "not-json"}, b"hello, not json")
    async with sidecar(sidecar_config([])) as running:
        out = await run(
            [*go_sdk, "send", f"{running.http_url}/topics/orders/events", "binary"],
            json.dumps(event).encode(),
        )
    assert json.loads(out.strip().splitlines()[-1]) == {"status": 400}


@pytest.mark.parametrize(
    ("delivered", "types"),
    [
        ("structured", {"tier": "int32", "vip": "bool", "tenant": "string"}),
        ("binary", {"tier": "string", "vip": "string", "tenant": "string"}),
    ],
)
async def test_typed_extensions_keep_their_types_in_structured_mode(
    go_sdk: list[str], tmp_path: Path, delivered: str, types: dict[str, str]
) -> None:
    """An Integer and a Boolean extension the Go SDK sends in structured mode reach a Go
    SDK webhook in structured mode with their types (int32, bool); in binary mode, whose
    headers carry no types, as their canonical strings."""
    event = with_data({**ORDER, "extensions": {"tier": 3, "vip": True, "tenant": "acme"}}, b"{}")
    async with go_receiver(go_sdk, None, tmp_path) as (url, receiver):
        config = sidecar_config([webhook("go", "orders", url, mode=delivered)])
        async with sidecar(config) as running:
            await go_send(go_sdk, f"{running.http_url}/topics/orders/events", "structured", event)
            seen = await receiver.spec()
    assert seen["extension_types"] == types
    if delivered == "structured":
        assert seen["extensions"] == {"tier": 3, "vip": True, "tenant": "acme"}
    else:
        assert seen["extensions"] == {"tier": "3", "vip": "true", "tenant": "acme"}
