"""Outgoing webhook signatures that the Standard Webhooks library itself verifies."""

from __future__ import annotations

import base64
import os
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from eventmesh.delivery.signing import WebhookSigner, delivery_id
from eventmesh.event import Event

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def test_a_signed_body_verifies_with_the_spec_library() -> None:
    """The headers sign exactly the body: the reference verifier accepts them."""
    body = b'{"specversion":"1.0","id":"1","type":"t","source":"/s"}'
    headers = WebhookSigner(SECRET).headers("msg-1", body)
    assert Webhook(SECRET).verify(body, headers) == {
        "specversion": "1.0",
        "id": "1",
        "type": "t",
        "source": "/s",
    }
    assert headers["webhook-signature"].startswith("v1,")


def test_a_changed_body_a_wrong_secret_or_an_old_timestamp_fails_verification() -> None:
    """The signature covers body, id and time; a stranger's secret does not verify."""
    body = b"{}"
    signer = WebhookSigner(SECRET)
    headers = signer.headers("msg-1", body)
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(b'{"x":1}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, {**headers, "webhook-id": "msg-2"})
    stale = signer.headers("msg-1", body, timestamp=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, stale)


def test_the_secret_may_be_bare_base64_but_not_short_or_garbage() -> None:
    """'whsec_' is optional; fewer than 24 key bytes or non-base64 is refused."""
    bare = SECRET.removeprefix("whsec_")
    body = b"[]"
    assert Webhook(SECRET).verify(body, WebhookSigner(bare).headers("m", body)) == []
    with pytest.raises(ValueError, match="24 bytes"):
        WebhookSigner("whsec_" + base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="base64"):
        WebhookSigner("whsec_not base64!")


def test_a_delivery_keeps_its_id_across_retries_and_batches_get_a_digest() -> None:
    """One event: its id; a batch or an id unfit for a header: a stable digest."""
    a = Event(type="t", source="/a", id="1")
    b = Event(type="t", source="/b", id="1")
    assert delivery_id([a]) == "1"
    assert delivery_id([a, b]) == delivery_id([a, b])
    assert delivery_id([a, b]) != delivery_id([b, a])
    assert delivery_id([a, b]).startswith("batch_")
    odd = Event(type="t", source="/a", id="line\r\nX-Injected: 1")
    assert "\n" not in delivery_id([odd])
    assert delivery_id([odd]).startswith("batch_")
