"""Signatures on outgoing webhooks, as the Standard Webhooks specification defines them.

A subscription with ``sink.signing_secret`` signs every delivery: ``webhook-id`` (the same
on every retry of that delivery), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``. A receiver checks
them with any Standard Webhooks library and the same secret (docs/security.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence

from eventmesh.event import Event

__all__ = ["WebhookSigner", "delivery_id"]

_PREFIX = "whsec_"


class WebhookSigner:
    """Signs webhook bodies with one secret: ``whsec_`` followed by base64 of at least
    24 random bytes (what the spec's tools generate), or the base64 alone."""

    def __init__(self, secret: str) -> None:
        encoded = secret[len(_PREFIX) :] if secret.startswith(_PREFIX) else secret
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(
                "a signing secret is 'whsec_' followed by base64 of 32 random bytes, "
                "such as 'whsec_' + the output of `openssl rand -base64 32`"
            ) from exc
        if len(key) < 24:
            raise ValueError("a signing secret needs at least 24 bytes of key (32 recommended)")
        self._key = key

    def headers(self, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        """The three headers that sign ``body`` as delivery ``msg_id``."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signed = b"%s.%s.%s" % (msg_id.encode(), stamp.encode(), body)
        mac = hmac.new(self._key, signed, hashlib.sha256).digest()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        }


def delivery_id(events: Sequence[Event]) -> str:
    """A ``webhook-id`` that is the same for every retry of one delivery: the event's id
    for one event (when it is short printable ASCII, fit for a header), otherwise a
    digest of the (source, id) pairs."""
    if len(events) == 1 and _header_safe(events[0].id):
        return events[0].id
    digest = hashlib.sha256()
    for event in events:
        digest.update(event.source.encode())
        digest.update(b"\0")
        digest.update(event.id.encode())
        digest.update(b"\0")
    return "batch_" + digest.hexdigest()[:32]


def _header_safe(value: str) -> bool:
    return 0 < len(value) <= 256 and value.isascii() and value.isprintable()
