"""The NATS connector: one nats-py connection, in JetStream or core mode.

The connector owns the connection and what both modes share (topic routing, the
binding, decoding received messages); :mod:`eventmesh_nats.jetstream` and
:mod:`eventmesh_nats.core` hold what differs. docs/nats.md says what each mode promises.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from eventmesh._dedupe import key_of
from eventmesh._redact import redact_url
from eventmesh.bindings.nats import (
    STRUCTURED_CONTENT_TYPE,
    from_message,
    to_binary,
    to_structured,
    wrap_message,
)
from eventmesh.connectors.base import (
    Capabilities,
    Connector,
    Consumer,
    StartPosition,
    StateStore,
    StoredEvent,
)
from eventmesh.errors import (
    ConnectError,
    ConnectorError,
    EventValidationError,
    PublishError,
    RejectedError,
    SubscribeError,
)
from eventmesh.event import Event, decode_json
from eventmesh_nats._errors import describe, is_slow_consumer, tolerated, translated
from eventmesh_nats.browse import read_stream
from eventmesh_nats.config import NatsConfig
from eventmesh_nats.core import CoreConsumer, CoreGroups, publish_core
from eventmesh_nats.jetstream import JetStreamConsumer, JetStreamPublisher, Streams
from eventmesh_nats.state import NatsStateStore

__all__ = ["NatsConnector"]

log = logging.getLogger(__name__)


class NatsConnector(Connector):
    """The NATS connector (``type: nats``): JetStream (stored) or core (fire and forget)."""

    Config = NatsConfig
    config: NatsConfig

    def __init__(self, config: NatsConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name or "nats")
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._streams: Streams | None = None
        self._publisher: JetStreamPublisher | None = None
        self._routes: dict[str, tuple[str, str]] = {}
        self._windows: dict[str, float] = {}  # topic -> the mesh's dedupe window
        self._slow = 0
        self._reader_lost = False  # health() said nats-py stopped reading (logged once)
        self.consumers: set[Consumer] = set()
        self.core_groups = CoreGroups(self)
        self._states: dict[str, NatsStateStore] = {}
        self.encode = to_binary if self.config.binding == "binary" else to_structured
        """The binding that writes events: (headers, payload) for an event."""

    @property
    def capabilities(self) -> Capabilities:
        if self.config.mode == "core":
            return Capabilities(
                durable=False,
                ordered_by_key=False,
                replay=False,
                consumer_groups=True,
                redelivery=True,
            )
        return Capabilities(
            durable=self.config.stream.storage == "file",
            ordered_by_key=False,
            replay=True,
            consumer_groups=True,
            redelivery=True,
        )

    # -- the connection ----------------------------------------------------------------------

    @property
    def nc(self) -> NATS:
        """The nats-py connection (while open)."""
        self._check_open_or_opening()
        assert self._nc is not None
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context (JetStream mode, while open)."""
        self._check_open_or_opening()
        assert self._js is not None
        return self._js

    @property
    def streams(self) -> Streams:
        """The streams this connector made sure of (JetStream mode)."""
        assert self._streams is not None
        return self._streams

    def _check_open_or_opening(self) -> None:
        if self._nc is None:
            self._check_open()

    async def _open(self) -> None:
        config = self.config
        servers = ", ".join(map(redact_url, config.servers))  # a URL may hold a password
        where = f"connecting to NATS at {servers} (connector {self.name!r})"
        options: dict[str, Any] = {
            "servers": list(config.servers),
            "name": config.name,
            "connect_timeout": config.connect_timeout,
            "reconnect_time_wait": config.reconnect_wait,
            # nats-py retries a first connection for ever unless this is positive; the
            # configured reconnect policy is put in place once connected (below).
            "max_reconnect_attempts": config.connect_attempts,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "user_credentials": config.credentials,
            "token": config.token,
            "user": config.user,
            "password": config.password,
        }
        with translated(ConnectError, where):
            if config.tls is not None:
                options["tls"] = _tls_context(config)
                options["tls_hostname"] = config.tls.hostname
                options["tls_handshake_first"] = config.tls.handshake_first
            self._nc = await nats.connect(**options)
        if config.max_reconnect_attempts == 0:
            self._nc.options["allow_reconnect"] = False
        else:
            self._nc.options["max_reconnect_attempts"] = config.max_reconnect_attempts
        try:
            if config.mode == "jetstream":
                js = self._nc.jetstream()
                with translated(ConnectError, f"{where}: checking that JetStream is enabled"):
                    await js.account_info()
                self._js = js
                self._streams = Streams(js, config, self._windows)
                self._publisher = JetStreamPublisher(self)
                with translated(ConnectError, where):
                    await self._publisher.start()
        except BaseException:
            nc, self._nc = self._nc, None
            with tolerated("closing after a failed open"):
                await nc.close()
            raise
        log.info("connector %r connected to %s (%s mode)", self.name, servers, config.mode)

    async def _close(self) -> None:
        for consumer in list(self.consumers):
            await consumer.close()
        for store in self._states.values():
            await store.close()
        self._states.clear()
        nc, self._nc = self._nc, None
        self._js = None
        if nc is not None:
            with tolerated("closing the connection"):
                await nc.close()  # sends what is still buffered (acks, naks) first

    @property
    def connected(self) -> bool:
        """True while the connection is up (False while reconnecting and once closed)."""
        return self._nc is not None and self._nc.is_connected

    async def health(self) -> bool:
        """Open, connected, and still reading: nats-py's read loop ends for good, with
        the connection still up, on a message it cannot parse (a header block that is
        not UTF-8, which a raw client can store), and nothing would arrive any more."""
        if not (self.is_open and self.connected):
            return False
        reader = getattr(self._nc, "_reading_task", None)  # nats-py has no public flag
        if reader is not None and reader.done():
            if not self._reader_lost:
                self._reader_lost = True
                log.error(
                    "connector %r: nats-py stopped reading from the server (it could not "
                    "parse a message; see its log line 'nats: encountered error'): "
                    "nothing arrives on this connection any more; restart the process, "
                    "and remove the message from its stream if it comes back",
                    self.name,
                )
            return False
        return True

    async def _on_error(self, exc: Exception) -> None:
        if is_slow_consumer(exc):
            self._slow += 1
            if self._slow == 1 or self._slow % 10_000 == 0:
                log.warning(
                    "connector %r: a core-mode member cannot keep up and nats-py dropped "
                    "messages for it (%d so far): raise core.buffer / core.pending_limit "
                    "/ core.pending_bytes, add members, or use JetStream mode (%s)",
                    self.name,
                    self._slow,
                    describe(exc),
                )
            return
        log.warning("connector %r: %s", self.name, describe(exc))

    async def _on_disconnected(self) -> None:
        if self._nc is None:
            return  # our own close
        log.warning("connector %r lost its connection to NATS; reconnecting", self.name)
        if self._publisher is not None:
            self._publisher.abandon_all("the connection to NATS was lost")

    async def _on_reconnected(self) -> None:
        log.info("connector %r reconnected to NATS", self.name)

    # -- topics and the binding --------------------------------------------------------------

    def check_topic(self, topic: str) -> None:
        """``RejectedError`` for a topic that cannot be a NATS subject (empty tokens,
        whitespace, ``*`` or ``>``, anything outside printable ASCII) or, in JetStream
        mode, whose stream name would be too long (see :meth:`NatsConfig.subject_for`).
        Remembers nothing: the mesh also checks names it does not keep (browsing)."""
        if topic not in self._routes:
            self._map(topic, RejectedError)

    def route(
        self, topic: str, error: type[ConnectorError], *, keep: bool = True
    ) -> tuple[str, str]:
        """The subject and stream of ``topic``; ``error`` when the topic cannot be mapped.

        Known topics are remembered (with ``keep``: publish and subscribe, which the mesh
        bounds by ``limits.max_topics``; browsing passes ``keep=False``)."""
        found = self._routes.get(topic)
        if found is None:
            found = self._map(topic, error)
            if keep:
                self._routes[topic] = found
        return found

    def _map(self, topic: str, error: type[ConnectorError]) -> tuple[str, str]:
        try:
            subject = self.config.subject_for(topic)
            stream = self.config.stream_for(topic) if self.config.mode == "jetstream" else ""
        except ValueError as exc:
            raise error(str(exc)) from None
        return subject, stream

    def decode(
        self, msg: Msg, stream: str | None = None, sequence: int = 0, stamp: float | None = None
    ) -> Event:
        """The event in a received message; a message that is no valid CloudEvent is
        wrapped (``cloudeventerror`` says why), never dropped. A stored message's
        ``stream``, ``sequence`` and ``stamp`` (seconds) give a wrapped one its id and time.

        Never raises: a message that fails to decode in any way is wrapped too, so that
        one bad message cannot fail the batch it came in (whose other messages would be
        neither delivered nor given back) or end the subscription.
        """
        headers = msg.headers
        if (
            headers is not None
            and len(headers) == 1
            and headers.get("Content-Type") == STRUCTURED_CONTENT_TYPE
        ):
            # What this binding writes (structured, no other header): the JSON format
            # straight away, without the general path's header walk. Once per message.
            try:
                return decode_json(msg.data)
            except Exception:
                pass  # the general path wraps it, and logs why
        id = None if stream is None else f"{stream}-{sequence}"
        stored = None if stamp is None else datetime.fromtimestamp(stamp, UTC)
        try:
            return from_message(msg.headers, msg.data, subject=msg.subject, id=id, time=stored)
        except EventValidationError as exc:
            reason = str(exc)
        except Exception as exc:  # whatever it is, one message must not strand the batch
            reason = f"it could not be decoded ({type(exc).__name__}: {str(exc)[:200]})"
        log.warning(
            "connector %r: a message on %r is not a valid CloudEvent (%s); delivering it "
            "wrapped as io.eventmesh.nats.message",
            self.name,
            msg.subject,
            reason,
        )
        return wrap_message(
            msg.headers, msg.data, subject=msg.subject, id=id, time=stored, error=reason
        )

    def state(self, bucket: str) -> StateStore | None:
        """The bucket as a JetStream KV bucket (see :mod:`eventmesh_nats.state`); None in
        core mode, which stores nothing."""
        self._check_open()
        if self.config.mode == "core":
            return None
        store = self._states.get(bucket)
        if store is None:
            store = self._states[bucket] = NatsStateStore(self, bucket)
        return store

    def duplicate_window(self, topic: str, seconds: float) -> None:
        """Create the stream of ``topic`` (when this connector creates it) with a
        ``duplicate_window`` of ``seconds`` instead of ``stream.duplicate_window``: the
        mesh's ``dedupe`` window of the topic, so that the stream drops a ``Nats-Msg-Id``
        it holds as long as the mesh promises (at most the stream's ``max_age``)."""
        self._windows[topic] = seconds

    # -- publishing and subscribing ----------------------------------------------------------

    async def publish(self, topic: str, events: Sequence[Event]) -> None:
        await self._publish(topic, events, None)

    async def republish(self, topic: str, events: Sequence[Event], keys: Sequence[str]) -> None:
        """As :meth:`publish`, with each ``Nats-Msg-Id`` made from the replay's key, not
        from the event's ``source`` and ``id``: the stream holds the event's first
        publish under that one for ``duplicate_window``, and would drop the replay."""
        if len(keys) != len(events):
            raise RejectedError(f"republish: {len(events)} events but {len(keys)} keys")
        await self._publish(topic, events, keys)

    async def _publish(
        self, topic: str, events: Sequence[Event], keys: Sequence[str] | None
    ) -> None:
        self._check_open()
        subject, stream = self.route(topic, RejectedError)
        if not events:
            return
        encode = self.encode
        messages = [encode(event) for event in events]
        if self.config.mode == "core":
            self._check_sizes(topic, messages)
            await publish_core(self, subject, messages, f"publishing to topic {topic!r}")
            return
        if keys is not None:
            for (headers, _), key in zip(messages, keys, strict=True):
                headers["Nats-Msg-Id"] = replay_id(key)
        elif self.config.deduplicate:
            for (headers, _), event in zip(messages, events, strict=True):
                headers["Nats-Msg-Id"] = message_id(event)
        self._check_sizes(topic, messages)  # with the Nats-Msg-Id each message is sent with
        assert self._publisher is not None
        await self.streams.ensure(topic, subject, stream, PublishError)
        await self._publisher.publish(topic, subject, stream, messages)

    def _check_sizes(self, topic: str, messages: list[tuple[dict[str, str], bytes]]) -> None:
        """``RejectedError`` before anything is sent when a message is larger than the
        server's ``max_payload``, headers included: nats-py checks only the payload, and
        the server answers a larger message by closing the connection, which nats-py
        then gives up for good. The exact size of every message (one header to count in
        structured mode, the attributes in binary mode)."""
        limit = self.nc.max_payload
        for i, (headers, payload) in enumerate(messages):
            size = len(payload) + _header_size(headers)
            if size > limit:
                raise RejectedError(
                    f"publishing to topic {topic!r}: event {i} of the call is {size} bytes "
                    f"as a NATS message, more than the server's max_payload ({limit}) "
                    "allows; NATS never stores it as sent: send smaller events, or raise "
                    "max_payload in the server's configuration"
                )

    async def read(
        self,
        topic: str,
        *,
        since: datetime | None = None,
        after: Mapping[int, int] | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Browse ``topic``'s stream with an ephemeral consumer that acks nothing
        (eventmesh_nats.browse); partition 0, the offset is the stream sequence."""
        self._check_open()
        return await read_stream(self, topic, since=since, after=after, limit=limit)

    def subscribe(self, topic: str, group: str, *, start: StartPosition = "latest") -> Consumer:
        self._check_open()
        self.route(topic, RejectedError)
        if not isinstance(group, str) or not group:
            raise SubscribeError(f"group must be a non-empty string, got {group!r}")
        if self.config.mode == "core":
            return CoreConsumer(self, topic, group, start)
        return JetStreamConsumer(self, topic, group, start)


def message_id(event: Event) -> str:
    """The ``Nats-Msg-Id`` of ``event``: 32 hex digits of the key the mesh's own dedupe
    window keeps for it (a hash of its ``source`` and ``id``), so the header stays short
    however long they are, and two events share it only when both attributes are equal."""
    return key_of(event).hex()


def replay_id(key: str) -> str:
    """The ``Nats-Msg-Id`` of a republish keyed ``key`` (:meth:`NatsConnector.republish`):
    32 hex digits, which no :func:`message_id` shares (its hash is personalised)."""
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogatepass"), digest_size=16, person=b"eventmesh-replay"
    )
    return digest.hexdigest()


def _header_size(headers: dict[str, str]) -> int:
    """Bytes of ``headers`` on the wire (``NATS/1.0``, a line each, a blank line)."""
    if not headers:
        return 0
    keys = "".join(headers)
    values = "".join(headers.values())
    if keys.isascii() and values.isascii():  # as they are once encoded: one check each
        size = len(keys) + len(values)
    else:
        size = len(keys.encode()) + len(values.encode())
    return 12 + 4 * len(headers) + size


def _tls_context(config: NatsConfig) -> ssl.SSLContext:
    tls = config.tls
    assert tls is not None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
