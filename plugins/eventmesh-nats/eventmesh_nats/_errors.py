"""The one place nats-py's exceptions become eventmesh's (``raise ... from exc``).

Every call into nats-py runs inside :func:`translated` (the failure is the caller's
problem: ConnectError, PublishError or SubscribeError) or :func:`tolerated` (the failure
does not matter to the caller, such as an ack the server can no longer take: it is
logged and swallowed). Nothing from ``nats`` escapes the connector.

What nats-py raises, and what it becomes::

    nats.errors.MaxPayloadError (while publishing)                  -> RejectedError
    nats.errors.Error (every nats-py error, JetStream's included)  -> the given kind
    asyncio.TimeoutError (some waits inside nats-py)                -> the given kind
    OSError, ssl.SSLError (sockets, certificate files)              -> the given kind
    ValueError (nats-py refusing an argument)                       -> the given kind
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors
import nats.js.errors

from eventmesh.errors import ConnectorError, PublishError, RejectedError

__all__ = [
    "NATS_ERRORS",
    "TIMEOUTS",
    "describe",
    "is_not_found",
    "is_retryable",
    "is_slow_consumer",
    "tolerated",
    "translate",
    "translated",
]

log = logging.getLogger(__name__)

NATS_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    asyncio.TimeoutError,
    OSError,
    ValueError,
)
"""What a call into nats-py may raise (ssl.SSLError is an OSError)."""
TIMEOUTS: tuple[type[BaseException], ...] = (nats.errors.TimeoutError, asyncio.TimeoutError)
"""What a wait that simply found nothing raises (a pull that expired empty)."""

_HINTS: dict[type[BaseException], str] = {
    nats.errors.NoServersError: "is nats-server running and reachable? (scripts/nats.sh start)",
    nats.errors.AuthorizationError: "check credentials, token or user and password",
    nats.errors.ConnectionClosedError: "the connection is closed; open a new connector",
    nats.errors.OutboundBufferLimitError: "the server is unreachable and the client's "
    "reconnect buffer is full; retry once it is back",
    nats.errors.MaxPayloadError: "the message is larger than the server's max_payload",
    nats.js.errors.NoStreamResponseError: "no stream stores this subject (is JetStream on?)",
    nats.js.errors.ServiceUnavailableError: "JetStream is not available on this server "
    "(start nats-server with -js)",
}


def describe(exc: BaseException) -> str:
    """A short, readable reason for a nats-py exception, with a hint where one helps."""
    if isinstance(exc, nats.js.errors.APIError) and exc.description:
        text = f"{exc.description} (JetStream code {exc.code}, error {exc.err_code})"
    else:
        detail = str(exc).strip()
        name = type(exc).__name__
        text = f"{name}: {detail}" if detail and detail != name else name
        text = text.removeprefix("nats: ")
    for kind, hint in _HINTS.items():
        if isinstance(exc, kind):
            return f"{text}; {hint}"
    return text


def is_not_found(exc: BaseException) -> bool:
    """True when JetStream says the stream or consumer asked about does not exist."""
    return isinstance(exc, nats.js.errors.NotFoundError)


def is_slow_consumer(exc: BaseException) -> bool:
    """True for nats-py's report that it dropped messages for a subscription that lags."""
    return isinstance(exc, nats.errors.SlowConsumerError)


def is_retryable(exc: BaseException) -> bool:
    """True when trying the same request again later may succeed (a restart, a blip)."""
    if isinstance(exc, nats.js.errors.APIError):
        return exc.code == 503
    return isinstance(
        exc,
        nats.errors.TimeoutError
        | nats.errors.NoRespondersError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.OutboundBufferLimitError
        | nats.errors.StaleConnectionError
        | nats.js.errors.NoStreamResponseError
        | asyncio.TimeoutError,
    )


def translate(kind: type[ConnectorError], what: str, exc: BaseException) -> ConnectorError:
    """The eventmesh error for a nats-py failure while doing ``what``; raise it ``from exc``.

    A message above the server's ``max_payload`` becomes ``RejectedError`` instead of a
    ``PublishError``: the same message can never be stored, so retrying cannot help.
    """
    if kind is PublishError and isinstance(exc, nats.errors.MaxPayloadError):
        kind = RejectedError
    return kind(f"{what}: {describe(exc)}")


@contextmanager
def translated(kind: type[ConnectorError], what: str) -> Iterator[None]:
    """Raise ``kind("<what>: <reason>")`` from any nats-py failure in the block."""
    try:
        yield
    except NATS_ERRORS as exc:
        raise translate(kind, what, exc) from exc


@contextmanager
def tolerated(what: str) -> Iterator[None]:
    """Log and swallow a nats-py failure in the block (for acks, nacks and clean-up)."""
    try:
        yield
    except NATS_ERRORS as exc:
        log.debug("%s failed, ignored: %s", what, describe(exc))
