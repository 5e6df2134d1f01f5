"""The NATS connector's typed configuration, and how topics map to subjects and streams.

Every key is documented in ``docs/nats.md``. A topic becomes the subject
``subject_prefix + topic`` (or what ``subjects`` maps it to); in JetStream mode it is
stored in the stream ``stream.name_prefix + <topic, escaped>`` (or what ``streams``
maps it to), created on first use. A topic that cannot be a NATS subject (empty,
whitespace, ``*`` or ``>``, an empty token, anything outside printable ASCII) is refused.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from eventmesh._redact import redacted_repr
from eventmesh.config import Duration

__all__ = [
    "ConsumerSettings",
    "CoreSettings",
    "NatsConfig",
    "StreamSettings",
    "TlsSettings",
    "escape_name",
    "is_subject",
]

# A literal subject: dot-separated non-empty tokens of printable ASCII, no wildcards.
_TOKEN = r"[!-)+,\-/-=?-~]+"
_SUBJECT = re.compile(rf"{_TOKEN}(\.{_TOKEN})*\Z")
# Stream and consumer names: JetStream refuses whitespace, '.', '*', '>', path separators.
_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
_PLAIN_NAME_CHAR = re.compile(r"[A-Za-z0-9_-]")
MAX_NAME_LENGTH = 200
"""Longest stream or consumer name we make (JetStream file stores use it as a directory)."""


def is_subject(text: str) -> bool:
    """True when ``text`` can be published to: a literal NATS subject."""
    return bool(_SUBJECT.match(text))


def escape_name(text: str) -> str:
    """``text`` as a JetStream stream or consumer name, one-to-one.

    Letters, digits, ``_`` and ``-`` stay; every other character becomes ``~`` and the
    hex of its UTF-8 bytes (``orders.created`` -> ``orders~2Ecreated``).
    """
    if _NAME.match(text):
        return text
    return "".join(
        ch if _PLAIN_NAME_CHAR.match(ch) else "".join(f"~{b:02X}" for b in ch.encode("utf-8"))
        for ch in text
    )


class TlsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """TLS towards the server (``tls://`` server URLs use TLS with the system's CAs)."""

    ca_file: str | None = None
    """PEM file of the CAs to trust instead of the system's."""
    cert_file: str | None = None
    """PEM client certificate, for servers that verify clients (with ``key_file``)."""
    key_file: str | None = None
    """PEM private key of ``cert_file``."""
    verify: bool = True
    """Check the server's certificate and host name. Turn off only for local testing."""
    hostname: str | None = None
    """The name to check the certificate against, when it differs from the URL's host."""
    handshake_first: bool = False
    """Start TLS before the NATS INFO line (servers with ``handshake_first``)."""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together: set both or neither")


class StreamSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How streams the connector creates are configured (JetStream mode).

    Applied when a stream is created; an existing stream is used as it is.
    """

    name_prefix: str = "EVENTMESH_"
    """Prefix of the stream created for a topic: ``EVENTMESH_orders``."""
    storage: Literal["file", "memory"] = "file"
    """``file`` survives a server restart; ``memory`` is faster and does not."""
    replicas: int = 1
    """Copies kept in a JetStream cluster (1, 3 or 5; a single server has 1)."""
    max_age: Duration | None = None
    """Events older than this are removed (None: kept until another limit)."""
    max_msgs: int | None = None
    """At most this many events are kept; the oldest go first (None: no limit)."""
    max_bytes: int | None = None
    """At most this many bytes are kept; the oldest go first (None: no limit)."""
    duplicate_window: Duration = Duration(120.0)
    """A publish with the ``source`` and ``id`` of an event stored this recently is
    stored once (with ``deduplicate``). A topic with the mesh's ``dedupe:`` gets a stream
    with its ``dedupe.window`` instead (at most ``max_age``)."""

    def __post_init__(self) -> None:
        if self.name_prefix and not _NAME.match(self.name_prefix):
            raise ValueError(
                f"stream.name_prefix {self.name_prefix!r} may use only letters, digits, '_' and '-'"
            )
        if self.replicas < 1:
            raise ValueError("stream.replicas must be at least 1")
        for key in ("max_msgs", "max_bytes"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"stream.{key} must be at least 1 (or null for no limit)")


class ConsumerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The durable consumer made for each group (JetStream mode), when it is created."""

    ack_wait: Duration = Duration(30.0)
    """An event not acked this long after delivery is delivered again (a crashed member)."""
    max_deliver: int | None = None
    """Deliveries of one event before JetStream gives up on it (None: no limit). Leave it
    unset so the mesh's ``max_attempts`` and dead-letter topic decide."""
    max_ack_pending: int = 1000
    """Events delivered to the group and not yet acked; beyond it, delivery pauses."""
    inactive_threshold: Duration | None = None
    """Remove a group's consumer after this long without members (None: keep it)."""
    recheck: Duration = Duration(30.0)
    """A member that got nothing for this long checks that its group's consumer still
    exists, and makes it again if it was deleted or lost in a restart."""

    def __post_init__(self) -> None:
        if self.ack_wait <= 0:
            raise ValueError("consumer.ack_wait must be positive")
        if self.max_deliver is not None and self.max_deliver < 1:
            raise ValueError("consumer.max_deliver must be at least 1 (or null for no limit)")
        if self.max_ack_pending < 1:
            raise ValueError("consumer.max_ack_pending must be at least 1")
        if self.recheck <= 0:
            raise ValueError("consumer.recheck must be positive")


class CoreSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Buffers of a member in core mode."""

    buffer: int = 10_000
    """Messages a member holds for its fetches, and events a group without members
    keeps for the next one that joins here."""
    pending_limit: int = 65_536
    """Messages nats-py may queue for a member beyond ``buffer``; past both the client
    drops messages and logs a slow consumer."""
    pending_bytes: int = 64 * 1024 * 1024
    """Bytes of payload nats-py may queue for a member (64 MiB, nats-py's own default);
    past it the client drops messages and logs a slow consumer, as past the count."""

    def __post_init__(self) -> None:
        if self.buffer < 1:
            raise ValueError("core.buffer must be at least 1")
        if self.pending_limit < 1:
            raise ValueError("core.pending_limit must be at least 1")
        if self.pending_bytes < 1:
            raise ValueError("core.pending_bytes must be at least 1")


class NatsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the NATS connector (``type: nats``)."""

    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    """Server URLs (``nats://``, ``tls://``); more than one for a cluster."""
    name: str | None = None
    """The connection's name, shown by the server's monitoring."""
    mode: Literal["jetstream", "core"] = "jetstream"
    """``jetstream``: stored, acked, replayable; ``core``: fire and forget (docs/nats.md)."""
    binding: Literal["structured", "binary"] = "structured"
    """How events are written: ``structured`` (one JSON payload and a Content-Type
    header) or ``binary`` (``ce-`` headers and the data). Both are always read."""

    credentials: str | None = None
    """Path to a ``.creds`` file (JWT and NKey seed)."""
    token: str | None = None
    """An authentication token."""
    user: str | None = None
    """User name, with ``password``."""
    password: str | None = None
    """Password of ``user``."""
    tls: TlsSettings | None = None
    """TLS settings; None uses TLS only for ``tls://`` URLs, with the system's CAs."""

    connect_timeout: Duration = Duration(2.0)
    """Seconds to wait for each attempt to reach a server."""
    connect_attempts: int = 2
    """Attempts per server to make the first connection; then opening fails."""
    reconnect_wait: Duration = Duration(2.0)
    """Seconds between attempts to reach a server again (after a lost connection)."""
    max_reconnect_attempts: int = -1
    """Attempts per server to reconnect before giving up for good (-1: never give up,
    0: do not reconnect)."""

    subject_prefix: str = "eventmesh."
    """Put before a topic to make its subject (``orders`` -> ``eventmesh.orders``)."""
    subjects: dict[str, str] = msgspec.field(default_factory=dict)
    """Topic -> subject, for topics that must use a given subject (no prefix added)."""
    streams: dict[str, str] = msgspec.field(default_factory=dict)
    """Topic -> stream name, for topics stored in a given (possibly existing) stream."""
    stream: StreamSettings = StreamSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    core: CoreSettings = CoreSettings()

    max_in_flight: int = 100
    """Publishes awaiting the stream's ack at once (JetStream mode), per connector."""
    publish_timeout: Duration = Duration(10.0)
    """How long one publish call keeps trying (through reconnects) before it fails."""
    deduplicate: bool = True
    """Send a ``Nats-Msg-Id`` (a hash of the event's ``source`` and ``id``) so that a
    retried publish is stored once within the stream's ``duplicate_window``."""

    def __repr__(self) -> str:
        """Every field, with the token, the password and any credential in a server URL
        shown as ``***``: a config printed whole leaks no credential."""
        return redacted_repr(self)

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("servers needs at least one URL, such as nats://127.0.0.1:4222")
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together: set both or neither")
        if self.subject_prefix and not is_subject(self.subject_prefix + "x"):
            raise ValueError(
                f"subject_prefix {self.subject_prefix!r} is not the start of a NATS subject "
                "(printable ASCII, no spaces, '*' or '>')"
            )
        for topic, subject in self.subjects.items():
            if not is_subject(subject):
                raise ValueError(
                    f"subjects[{topic!r}] is {subject!r}, not a literal NATS subject "
                    "(dot-separated tokens of printable ASCII, no spaces, '*' or '>')"
                )
        seen: dict[str, str] = {}
        for topic, stream in self.streams.items():
            if not _NAME.match(stream) or len(stream) > MAX_NAME_LENGTH:
                raise ValueError(
                    f"streams[{topic!r}] is {stream!r}; stream names use letters, digits, "
                    f"'_' and '-' (at most {MAX_NAME_LENGTH})"
                )
            if stream in seen:
                raise ValueError(
                    f"topics {seen[stream]!r} and {topic!r} both map to stream {stream!r}; "
                    "give each topic its own stream"
                )
            seen[stream] = topic
        if self.connect_attempts < 1:
            raise ValueError("connect_attempts must be at least 1")
        if self.max_reconnect_attempts < -1:
            raise ValueError("max_reconnect_attempts is -1 (for ever), 0 (never) or a count")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if self.publish_timeout <= 0:
            raise ValueError("publish_timeout must be positive")

    def subject_for(self, topic: str) -> str:
        """The subject of ``topic``; raises ValueError when the topic cannot be one."""
        subject = self.subjects.get(topic)
        if subject is not None:
            return subject
        if not isinstance(topic, str) or not is_subject(topic):
            raise ValueError(
                f"topic {topic!r} cannot be a NATS subject: use dot-separated, non-empty "
                "tokens of printable ASCII without spaces, '*' or '>'"
            )
        return self.subject_prefix + topic

    def stream_for(self, topic: str) -> str:
        """The stream that stores ``topic``; raises ValueError when the name is too long."""
        stream = self.streams.get(topic)
        if stream is not None:
            return stream
        name = self.stream.name_prefix + escape_name(topic)
        if len(name) > MAX_NAME_LENGTH:
            raise ValueError(
                f"topic {topic!r} makes the stream name {name[:40]!r}..., longer than "
                f"{MAX_NAME_LENGTH} characters; use a shorter topic or map it under 'streams'"
            )
        return name
