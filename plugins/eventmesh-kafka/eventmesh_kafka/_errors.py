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

Each message says what failed and where, gives the broker's own reason, and ends with
what to do. A record aiokafka cannot decode (``getmany`` raises, for ever, and loses the
records it had taken) is read past by :func:`read_past_unreadable`; docs/kafka.md.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import aiokafka.errors as kafka_errors

from eventmesh.bindings.kafka import wrap_message
from eventmesh.errors import (
    ConnectorError,
    EventValidationError,
    PublishError,
    RejectedError,
    SubscribeError,
)
from eventmesh.event import Event

__all__ = [
    "CLIENT_ERRORS",
    "SETUP_ERRORS",
    "TOO_LARGE",
    "describe",
    "is_success",
    "read_past_unreadable",
    "record_time",
    "refused",
    "tolerated",
    "translate",
    "translated",
    "unreadable",
    "unreadable_event",
    "wrap_record",
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


_LATEST_MS: Final = 253_402_300_800_000
"""The first millisecond after 9999-12-31T23:59:59.999Z, the last a datetime holds."""


def record_time(timestamp_ms: int) -> float | None:
    """A record's timestamp in seconds since the epoch, or None when it has none (-1)
    or one past year 9999: Kafka stores any 64-bit CreateTime a producer sends."""
    return timestamp_ms / 1000 if 0 <= timestamp_ms < _LATEST_MS else None


def unreadable(exc: BaseException) -> str:
    """Why a record is delivered without its content: aiokafka raised ``exc`` reading it."""
    return (
        f"the Kafka client cannot decode this record ({describe(exc)}: a header name that "
        "is not UTF-8, or a record it cannot parse; records after it in the same record "
        "batch are unreadable too); its key, value and headers are not available: read "
        "it by topic, partition and offset with another Kafka client"
    )


def unreadable_event(
    topic: str, partition: int, offset: int, reason: str, *, level: int = logging.WARNING
) -> Event:
    """The event for a record whose content cannot be read: the wrapping rule of
    ``wrap_message`` with its coordinates and ``reason`` only, so it cannot fail."""
    log.log(level, "%s[%d]@%d cannot be read (%s); wrapping it", topic, partition, offset, reason)
    return wrap_message(
        None, None, (), topic=topic, partition=partition, offset=offset, error=reason
    )


def wrap_record(
    record: Any, stamp: float | None, exc: Exception, *, level: int = logging.WARNING
) -> Event:
    """The event for a record ``from_message`` raised ``exc`` for: wrapped with its
    content when it is an invalid CloudEvent, with its coordinates alone when even that
    fails (whatever the reason, the record is delivered, never dropped)."""
    where = (record.topic, record.partition, record.offset)
    if isinstance(exc, EventValidationError):
        log.log(level, "%s[%d]@%d is not a valid CloudEvent (%s); wrapping it", *where, exc)
        try:
            return wrap_message(
                record.key,
                record.value,
                record.headers,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                timestamp=stamp,
                error=str(exc),
            )
        except Exception as again:
            exc = again
    reason = (
        f"the record cannot be read as an event ({describe(exc)}); read it by topic, "
        "partition and offset with another Kafka client"
    )
    return unreadable_event(*where, reason, level=level)


async def read_past_unreadable(
    client: Any,
    nexts: Mapping[Any, int],
    *,
    timeout_ms: int,
    max_records: int,
    current: Callable[[], bool] = lambda: True,
) -> tuple[dict[Any, list[Any]], dict[Any, tuple[int, Exception]]]:
    """Read again after ``client.getmany`` raised on a record it cannot decode.

    ``nexts`` holds, for each partition the caller reads, the offset after the last
    record it used (or where it started): the failed call's records are lost, so each
    partition is moved back there. Then each is read on its own; the one that fails is
    read again one record at a time, since a one-record call that raises leaves the
    position at the record it could not decode. Returns the records read (up to
    ``max_records``, per partition in offset order) and, for a partition that holds an
    unreadable record, its offset and the error; the position is then past it, so the
    caller's next ``getmany`` goes on after it. Client errors are raised as they are.
    ``current`` is asked after every wait: once it says False (the group rebalanced, or
    the reader closed), nothing is moved any more and nothing is returned.
    """
    for tp, offset in nexts.items():
        position = await client.position(tp)
        if not current():
            return {}, {}
        if position != offset:
            client.seek(tp, offset)
    records: dict[Any, list[Any]] = {}
    bad: dict[Any, tuple[int, Exception]] = {}
    room = max_records
    for tp, offset in nexts.items():
        highwater = client.highwater(tp)
        if room <= 0 or (highwater is not None and offset >= highwater):
            continue
        try:
            got = (await client.getmany(tp, timeout_ms=timeout_ms, max_records=room)).get(tp)
        except CLIENT_ERRORS:
            raise
        except Exception:  # the unreadable record is here: read one record at a time
            if not current():
                return {}, {}
            client.seek(tp, offset)
            got = []
            while len(got) < room:
                try:
                    one = await client.getmany(tp, timeout_ms=timeout_ms, max_records=1)
                except CLIENT_ERRORS:
                    raise
                except Exception as exc:  # the position is left at the unreadable record
                    at = int(await client.position(tp))
                    if not current():
                        return {}, {}
                    bad[tp] = (at, exc)
                    client.seek(tp, at + 1)
                    break
                if not one:
                    break
                got.extend(one.get(tp, ()))
        if not current():
            return {}, {}
        if got:
            records[tp] = got
            room -= len(got)
    return records, bad
