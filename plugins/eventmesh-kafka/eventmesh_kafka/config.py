"""The Kafka connector's settings: one frozen struct, checked when the config loads."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["KafkaConfig"]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Compression = Literal["gzip", "snappy", "lz4", "zstd"]

_SECRET = "sasl_plain_password"


class KafkaConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the Kafka connector (``type: kafka``); docs/kafka.md explains each."""

    # -- connection ----------------------------------------------------------------------
    bootstrap_servers: str = "127.0.0.1:9092"
    """Brokers to bootstrap from: ``host:port``, comma-separated for several."""
    client_id: str = "eventmesh"
    """Names this client in the brokers' logs, metrics and quotas."""
    request_timeout_ms: int = 30_000
    """How long a request to a broker (a send, a commit, a lookup) may take."""

    # -- security ------------------------------------------------------------------------
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    """Required with ``SASL_PLAINTEXT`` and ``SASL_SSL``."""
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    """Never shown by ``repr``; pass it through the environment rather than the file."""
    ssl_cafile: str | None = None
    """CA bundle that signed the brokers' certificates (default: the system's)."""
    ssl_certfile: str | None = None
    """Client certificate, for brokers that authenticate clients by TLS."""
    ssl_keyfile: str | None = None
    """The client certificate's private key."""

    # -- publishing ----------------------------------------------------------------------
    linger_ms: int = 0
    """How long the producer waits for more events to fill a batch. While a request is in
    flight events batch up anyway; raise it to trade latency for fewer, larger requests."""
    max_batch_size: int = 65_536
    """Bytes per partition batch."""
    max_request_size: int = 1_048_576
    """The largest request, and so the largest event, the producer sends; the broker's
    ``message.max.bytes`` must allow it too."""
    compression_type: Compression | None = None
    """Batch compression; ``snappy``, ``lz4`` and ``zstd`` need aiokafka's extras."""

    # -- consuming -----------------------------------------------------------------------
    max_poll_records: int = 500
    """Records one fetch takes from the client's buffer at most."""
    session_timeout_ms: int = 10_000
    """A member silent for this long is out of its group and its partitions move on."""
    heartbeat_interval_ms: int = 1_000
    """How often a member tells the group it is alive; it also learns of rebalances then,
    so this bounds how long a joining member waits. Keep it below a third of the session
    timeout."""
    max_poll_interval_ms: int = 300_000
    """A member that fetches nothing for this long (its handlers are all stuck) is taken
    out of the group, and its partitions go to the others."""
    commit_interval_ms: int = 100
    """How often acked positions are committed (and on every 5,000th ack, on close and
    when a partition is taken away)."""

    # -- topics --------------------------------------------------------------------------
    create_topics: bool = True
    """Create a topic on its first publish or subscribe if it does not exist."""
    partitions: int = 8
    """Partitions of a created topic: how many members of one group can share its work."""
    replication_factor: int | None = None
    """Replicas of a created topic; None takes as many as there are brokers, up to 3."""
    state_topic_prefix: str = "eventmesh.state."
    """The mesh keeps its own state (the subscriptions made through the sidecar's API)
    in compacted topics named this plus the bucket (``eventmesh.state.subscriptions``);
    meshes that must not share that state on one cluster use different prefixes."""

    # -- the CloudEvents binding ---------------------------------------------------------
    mode: Literal["binary", "structured"] = "binary"
    """How published events are written: attributes as ``ce_`` headers and the data as
    the value, or the whole event as JSON. Consumers read both."""
    empty_data: Literal["null", "empty"] = "null"
    """In binary mode, the value of a record for an event without data: ``null`` (no
    value, as the CloudEvents Kafka binding says; a compacted topic takes it for a
    tombstone and Java's ``CloudEventDeserializer`` never sees it) or ``empty`` (an
    empty value, which every reader takes for no data). See the README."""

    def __post_init__(self) -> None:
        for name in (
            "request_timeout_ms",
            "max_batch_size",
            "max_request_size",
            "max_poll_records",
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "max_poll_interval_ms",
            "commit_interval_ms",
            "partitions",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.linger_ms < 0:
            raise ValueError("linger_ms cannot be negative")
        if self.replication_factor is not None and self.replication_factor < 1:
            raise ValueError("replication_factor must be at least 1 (or null for automatic)")
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap_servers must name at least one host:port")
        if not all(c.isascii() and (c.isalnum() or c in "._-") for c in self.state_topic_prefix):
            raise ValueError(
                "state_topic_prefix may use only ASCII letters, digits, '.', '_' and '-' "
                "(it begins Kafka topic names)"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                "heartbeat_interval_ms must be below session_timeout_ms (a third or less)"
            )
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        if sasl and (self.sasl_plain_username is None or self.sasl_plain_password is None):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_plain_username "
                "and sasl_plain_password"
            )
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError("sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL")
        uses_ssl = self.security_protocol in ("SSL", "SASL_SSL")
        ssl_files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if not uses_ssl and any(f is not None for f in ssl_files):
            raise ValueError(
                "ssl_cafile/ssl_certfile/ssl_keyfile need security_protocol SSL or SASL_SSL"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile")

    @property
    def servers(self) -> list[str]:
        """``bootstrap_servers`` as a list."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def __repr__(self) -> str:
        parts = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            shown = "'***'" if name == _SECRET and value is not None else repr(value)
            parts.append(f"{name}={shown}")
        return f"KafkaConfig({', '.join(parts)})"
