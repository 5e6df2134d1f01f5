"""The rules for a webhook sink's settings, shared by the config (``SinkConfig``), the
sidecar's API and :class:`~eventmesh.delivery.webhook.WebhookSink`.

Checked when a sink is made, never per event: a timeout or batch size a client may set
has a range, headers cannot smuggle a second header or request (no CR, LF or other
control character), credentials are given once, in the URL or in an
``Authorization`` header, not both, and a signing secret is one
:class:`~eventmesh.delivery.signing.WebhookSigner` takes. Messages never quote a header
value, a URL or a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from eventmesh.delivery.policy import MAX_DELAY, check_range
from eventmesh.delivery.signing import WebhookSigner

__all__ = [
    "MAX_BATCH",
    "MAX_BATCH_WINDOW",
    "MAX_HEADERS",
    "MAX_HEADER_VALUE",
    "sink_problem",
]

MAX_BATCH: Final = 10_000
"""The most events one batch-mode request may carry (``max_batch``)."""
MAX_BATCH_WINDOW: Final = 60.0
"""The longest ``batch_window``, in seconds."""
MAX_HEADERS: Final = 64
"""The most extra headers one sink may send."""
MAX_HEADER_VALUE: Final = 8192
"""Characters of one header value (and of one name, 256)."""

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}\Z")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_FRAMING: Final = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
"""Headers that frame the request or steer its connection (RFC 9110 and 9112): the HTTP
client sets them, and a sink's own value would cut the body short, make its end
ambiguous to a proxy (request smuggling) or stall the request."""


def sink_problem(
    url: str | None,
    *,
    timeout: float,
    max_batch: int,
    batch_window: float,
    headers: Mapping[str, str],
    signing_secret: str | None = None,
) -> tuple[str, str] | None:
    """What is wrong with these webhook settings, as the key (``timeout``,
    ``headers.Authorization``, ...) and a message, or None when nothing is."""
    ranges: tuple[tuple[str, float, float, float, bool, str], ...] = (
        ("timeout", timeout, 0.0, MAX_DELAY, True, "s"),
        ("max_batch", max_batch, 1, MAX_BATCH, False, ""),
        ("batch_window", batch_window, 0.0, MAX_BATCH_WINDOW, False, "s"),
    )
    for key, number, low, high, above, unit in ranges:
        try:
            check_range(key, number, low, high, above=above, unit=unit)
        except ValueError as exc:
            return key, str(exc)
    if len(headers) > MAX_HEADERS:
        return "headers", f"{len(headers)} headers, more than the {MAX_HEADERS} a sink may send"
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            return "headers", (
                f"{str(name)[:60]!r} is not a header name: use 1 to 256 letters, digits "
                "and !#$%&'*+-.^_`|~"
            )
        if name.lower() in _FRAMING:
            return f"headers.{name}", (
                "the request's framing and connection headers are the client's to set "
                "(a Content-Length would cut the body short, a Transfer-Encoding make its "
                "end ambiguous); leave this header out"
            )
        if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE:
            return f"headers.{name}", f"a header value is a string of at most {MAX_HEADER_VALUE}"
        if _CONTROL.search(value):
            return f"headers.{name}", (
                "the value holds a control character (CR, LF or another); a header value "
                "is one line of text"
            )
    if url is not None and any(name.lower() == "authorization" for name in headers):
        try:
            parts = urlsplit(url)
            userinfo = parts.username is not None or parts.password is not None
        except ValueError:
            userinfo = False  # a malformed URL is refused where URLs are checked
        if userinfo:
            return "headers", (
                "ambiguous credentials: the webhook URL has a user:password@ part and an "
                "Authorization header is set too; give the credentials once, in the header"
            )
    if signing_secret is not None:
        try:
            WebhookSigner(signing_secret)
        except ValueError as exc:
            return "signing_secret", str(exc)
    return None
