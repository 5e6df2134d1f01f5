"""The one place aiokafka's exceptions become eventmesh's (``raise ... from exc``).

Every call into aiokafka runs inside :func:`translated` (the failure is the caller's
problem: it becomes the ``ConnectError``, ``PublishError`` or ``SubscribeError`` the
caller names) or :func:`tolerated` (the failure does not change what the caller may
assume, such as a commit the group no longer takes: it is logged and swallowed).
Nothing from ``aiokafka`` escapes the connector.

What aiokafka raises, and what it becomes::

    aiokafka.errors.KafkaError (broker answers, timeouts, connections) -> the given kind
    aiokafka.errors.ConsumerStoppedError, IllegalOperation            -> the given kind
    MessageSizeTooLargeError, RecordTooLargeError (while publishing)   -> RejectedError
    InvalidTopicError (a name the broker refuses, e.g. a collision)    -> RejectedError
    asyncio.TimeoutError (waits inside aiokafka)                       -> the given kind
    OSError, ssl.SSLError (sockets, certificate files)                 -> the given kind
    ValueError, RuntimeError (only while building clients: a setting   -> the given kind
        aiokafka refuses, a compression library that is missing)

Each message says what failed and where (the topic, the group, the servers), gives the
broker's own reason, and ends with what to do when there is something to do.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import aiokafka.errors as kafka_errors

from eventmesh.errors import ConnectorError, PublishError, RejectedError, SubscribeError

__all__ = [
    "CLIENT_ERRORS",
    "SETUP_ERRORS",
    "TOO_LARGE",
    "describe",
    "is_success",
    "refused",
    "tolerated",
    "translate",
    "translated",
]

log = logging.getLogger(__name__)

CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaError,
    kafka_errors.ConsumerStoppedError,
    kafka_errors.IllegalOperation,
    asyncio.TimeoutError,
    OSError,
)
"""What a call into a running aiokafka client may raise."""
SETUP_ERRORS: tuple[type[BaseException], ...] = (*CLIENT_ERRORS, ValueError, RuntimeError)
"""What building an aiokafka client may raise as well."""

_CONNECTION = (
    "is the broker running and reachable at the bootstrap_servers? "
    "(locally: scripts/kafka.sh start); check security_protocol too"
)
_TIMEOUT = "the broker did not answer within request_timeout_ms; is it up and not overloaded?"
_TOO_LARGE = (
    "the event is larger than max_request_size or the topic's max.message.bytes allows; "
    "send smaller events or raise both"
)
_UNSETTLED = "the partition has no leader just now (a broker restarting?); publish again shortly"
_SASL = "check sasl_mechanism, sasl_plain_username and sasl_plain_password"

_HINTS: dict[type[BaseException], str] = {
    kafka_errors.KafkaConnectionError: _CONNECTION,
    kafka_errors.NoBrokersAvailable: _CONNECTION,
    kafka_errors.NodeNotReadyError: _CONNECTION,
    ConnectionError: _CONNECTION,
    kafka_errors.KafkaTimeoutError: _TIMEOUT,
    kafka_errors.RequestTimedOutError: _TIMEOUT,
    asyncio.TimeoutError: _TIMEOUT,
    kafka_errors.UnknownTopicOrPartitionError: (
        "the topic does not exist: create it, or set create_topics: true"
    ),
    kafka_errors.InvalidTopicError: (
        "topic names use ASCII letters, digits, '.', '_' and '-', at most 249 of them, "
        "and may not differ from an existing topic only by '.' against '_'"
    ),
    kafka_errors.TopicAuthorizationFailedError: (
        "this client may not use the topic: check the broker's ACLs for it"
    ),
    kafka_errors.GroupAuthorizationFailedError: (
        "this client may not join the consumer group: check the broker's ACLs for it"
    ),
    kafka_errors.ClusterAuthorizationFailedError: (
        "this client lacks a cluster permission (creating topics needs one): check the "
        "ACLs, or create the topic yourself and set create_topics: false"
    ),
    kafka_errors.AuthenticationFailedError: _SASL,
    kafka_errors.AuthenticationMethodNotSupported: _SASL,
    kafka_errors.UnsupportedSaslMechanismError: _SASL,
    kafka_errors.IllegalSaslStateError: _SASL,
    kafka_errors.MessageSizeTooLargeError: _TOO_LARGE,
    kafka_errors.RecordTooLargeError: _TOO_LARGE,
    kafka_errors.RecordListTooLargeError: _TOO_LARGE,
    kafka_errors.NotEnoughReplicasError: (
        "fewer replicas are in sync than the topic's min.insync.replicas, so the event "
        "was not stored; publish again once the cluster is healthy"
    ),
    kafka_errors.NotEnoughReplicasAfterAppendError: (
        "the event was written but not to enough replicas; publish it again (consumers "
        "may see it twice)"
    ),
    kafka_errors.InvalidReplicationFactorError: (
        "replication_factor is larger than the number of brokers; lower it"
    ),
    kafka_errors.PolicyViolationError: (
        "the broker's policy refused the topic settings; create the topic yourself"
    ),
    kafka_errors.UnsupportedCodecError: (
        "install the compression library: pip install 'aiokafka[snappy,lz4,zstd]'"
    ),
    ssl.SSLError: (
        "check ssl_cafile, ssl_certfile and ssl_keyfile, and that the listener speaks TLS"
    ),
    FileNotFoundError: "a certificate or key file named in the settings does not exist",
    kafka_errors.LeaderNotAvailableError: _UNSETTLED,
    kafka_errors.NotLeaderForPartitionError: _UNSETTLED,
    kafka_errors.OutOfOrderSequenceNumber: (
        "an earlier request timed out and broke the producer's sequence; the connector "
        "starts a new producer, so publish again"
    ),
    # Stop the lookup here: without this, every KafkaError would get RuntimeError's hint.
    kafka_errors.KafkaError: "",
    RuntimeError: "check the connector's settings (a compression_type may need a library)",
}


def _hint(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        hint = _HINTS.get(cls)
        if hint is not None:
            return hint
    return ""


def describe(exc: BaseException) -> str:
    """The client's reason for ``exc``, as one short line."""
    text = str(exc).strip()
    name = type(exc).__name__
    if not text:
        return name
    return text if name in text else f"{name}: {text}"


TOO_LARGE: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
)
"""What aiokafka and the broker raise for a record larger than they take: the same
record can never be stored, so a publish failing with one is a ``RejectedError``."""
_INVALID_TOPIC = kafka_errors.InvalidTopicError


def translate(exc: BaseException, kind: type[ConnectorError], where: str) -> ConnectorError:
    """``exc`` as a ``kind`` whose message says where, the reason, and what to do.

    A record too large for the producer or the broker becomes ``RejectedError`` instead
    of a ``PublishError``: retrying the same event cannot help.
    """
    hint = _hint(exc)
    if kind is PublishError and isinstance(exc, TOO_LARGE):
        kind = RejectedError
    elif kind in (PublishError, SubscribeError) and isinstance(exc, _INVALID_TOPIC):
        kind = RejectedError  # a name the broker refuses (one colliding with another)
    return kind(f"{where}: {describe(exc)}" + (f"; {hint}" if hint else ""))


@contextmanager
def translated(kind: type[ConnectorError], where: str, *, setup: bool = False) -> Iterator[None]:
    """Run aiokafka calls; raise what they raise as ``kind`` (from the original).

    ``setup`` also translates the ValueError and RuntimeError aiokafka raises for
    settings it refuses while building a client.
    """
    caught = SETUP_ERRORS if setup else CLIENT_ERRORS
    try:
        yield
    except caught as exc:
        raise translate(exc, kind, where) from exc


_REBALANCED: tuple[type[BaseException], ...] = (
    kafka_errors.CommitFailedError,
    kafka_errors.IllegalStateError,
    kafka_errors.RebalanceInProgressError,
)


@contextmanager
def tolerated(where: str) -> Iterator[None]:
    """Run aiokafka calls whose failure the caller can live with; log it and go on.

    A commit refused because the group rebalanced is routine (the partition's next owner
    starts from the last commit) and is logged at debug level; anything else as a warning.
    """
    try:
        yield
    except _REBALANCED as exc:
        log.debug("%s: %s", where, describe(exc))
    except CLIENT_ERRORS as exc:
        log.warning("%s: %s", where, describe(exc))


def refused(
    kind: type[ConnectorError], where: str, code: int, message: str | None
) -> ConnectorError:
    """A ``kind`` for an error code in a broker's answer (as CreateTopics returns them)."""
    cls = kafka_errors.for_code(code)
    exc = cls(message) if message else cls()
    return translate(exc, kind, where)


def is_success(code: int, *, exists_ok: bool = False) -> bool:
    """True for an error code that means the request did what was asked (or, with
    ``exists_ok``, that what was to be created exists already)."""
    cls = kafka_errors.for_code(code)
    return cls is kafka_errors.NoError or (
        exists_ok and cls is kafka_errors.TopicAlreadyExistsError
    )
