"""JetStream mode: a stream per topic, pipelined publishes, a durable pull consumer per group.

Publishing sends each message with its own reply subject under one wildcard inbox and
counts the stream's acks as they come back, with at most ``max_in_flight`` awaiting an
ack per connector; ``publish`` returns once every event of the call is acked. A message
that gets no ack (a restart, a lost connection) or a "try again" answer is sent again,
with the same ``Nats-Msg-Id`` so the stream keeps it once, until ``publish_timeout``.

Each group is a durable pull consumer named after the group (explicit acks); every
member of the group pulls from it, so members share the work, and a member that leaves
gives what it had not acked back at once (a nak), while a member that dies gives it
back after ``consumer.ack_wait``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from eventmesh.connectors.base import Consumer, Delivery, StartPosition
from eventmesh.errors import (
    ConnectorError,
    LifecycleError,
    PublishError,
    SubscribeError,
)
from eventmesh.event import Event
from eventmesh_nats._errors import (
    NATS_ERRORS,
    describe,
    is_not_found,
    is_retryable,
    tolerated,
    translate,
    translated,
)
from eventmesh_nats._pull import Puller
from eventmesh_nats.config import NatsConfig, escape_name

if TYPE_CHECKING:
    from eventmesh_nats.connector import NatsConnector

__all__ = ["JetStreamConsumer", "JetStreamPublisher", "Streams"]

log = logging.getLogger(__name__)

_ROUND_WAIT = 2.0
"""Seconds to wait for the acks of one round of sends before sending the rest again."""
_POLL = 5.0
"""Longest wait of one round of fetch when it has no timeout."""
_CLOCK_SLACK = 1.0
"""Seconds subtracted from a member's own clock where the server's clock decides (a
consumer made again starts by the server's store times)."""
_REFUSED_WAIT = 0.5
"""Seconds fetch waits before asking again after the server refused a pull request."""
_NOT_JETSTREAM: tuple[type[BaseException], ...] = (*NATS_ERRORS, IndexError)
"""What ``Msg.metadata`` raises for a reply subject that is no JetStream ack subject."""
_ACK: Final = b"+ACK"


# -- streams --------------------------------------------------------------------------------


class Streams:
    """Makes sure the stream of a topic exists and stores its subject; remembers which do."""

    def __init__(
        self, js: JetStreamContext, config: NatsConfig, windows: Mapping[str, float] | None = None
    ) -> None:
        self._js = js
        self._config = config
        self._windows = windows if windows is not None else {}
        """Topic -> the duplicate window its stream is created with, when not the
        configured ``stream.duplicate_window`` (the mesh's ``dedupe`` window)."""
        self._ready: set[str] = set()
        self._lock = anyio.Lock()

    def forget(self, topic: str) -> None:
        """Check the stream again on next use (it may have been deleted)."""
        self._ready.discard(topic)

    async def ensure(
        self, topic: str, subject: str, stream: str, error: type[ConnectorError]
    ) -> None:
        """Create ``stream`` for ``subject`` if missing, or add the subject to it."""
        if topic in self._ready:
            return
        async with self._lock:
            if topic in self._ready:
                return
            with translated(error, f"preparing stream {stream!r} for topic {topic!r}"):
                await self._ensure(subject, stream, self._windows.get(topic))
            self._ready.add(topic)

    async def _ensure(self, subject: str, stream: str, window: float | None) -> None:
        try:
            info = await self._js.stream_info(stream)
        except NATS_ERRORS as exc:
            if not is_not_found(exc):
                raise
        else:
            subjects = list(info.config.subjects or [])
            if not any(_matches(pattern, subject) for pattern in subjects):
                log.info("adding subject %r to existing stream %r", subject, stream)
                await self._js.update_stream(info.config.evolve(subjects=[*subjects, subject]))
            kept = info.config.duplicate_window
            if window is not None and kept is not None and kept + 0.001 < window:
                log.warning(
                    "stream %r remembers Nats-Msg-Ids for %gs, less than the topic's dedupe "
                    "window of %gs: a retry through another process after that is stored "
                    "again; raise the stream's duplicate_window (the stream is used as it is)",
                    stream,
                    kept,
                    window,
                )
            return
        settings = self._config.stream
        if window is None:
            window = settings.duplicate_window
        if settings.max_age is not None:
            window = min(window, settings.max_age)  # JetStream refuses a longer one
        log.info("creating stream %r for subject %r", stream, subject)
        try:
            await self._js.add_stream(
                StreamConfig(
                    name=stream,
                    subjects=[subject],
                    retention=RetentionPolicy.LIMITS,
                    discard=DiscardPolicy.OLD,
                    storage=StorageType.FILE if settings.storage == "file" else StorageType.MEMORY,
                    num_replicas=settings.replicas,
                    max_age=settings.max_age,
                    max_msgs=settings.max_msgs,
                    max_bytes=settings.max_bytes,
                    duplicate_window=window,
                )
            )
        except NATS_ERRORS as exc:
            # Another process may have created it at the same moment: fine if it exists now.
            try:
                await self._js.stream_info(stream)
            except NATS_ERRORS:
                raise exc from None


def _matches(pattern: str, subject: str) -> bool:
    """True when the subject filter ``pattern`` (``*`` and ``>`` wildcards) covers ``subject``."""
    if pattern == subject:
        return True
    parts = pattern.split(".")
    tokens = subject.split(".")
    for i, part in enumerate(parts):
        if part == ">":
            return len(tokens) > i
        if i >= len(tokens) or (part != "*" and part != tokens[i]):
            return False
    return len(tokens) == len(parts)


# -- publishing ----------------------------------------------------------------------------


class _Round:
    """One pass of sends for one publish call, and what came back."""

    __slots__ = ("done", "failed", "fatal", "outstanding", "reason", "sent", "tokens")

    def __init__(self) -> None:
        self.outstanding = 0
        self.sent = False  # every message of the round has been sent
        self.done = anyio.Event()  # set once sent and every ack (or failure) is in
        self.tokens: dict[str, int] = {}  # reply token -> index of the message
        self.failed: list[int] = []  # indices to send again
        self.fatal: str | None = None  # a refusal that sending again cannot fix
        self.reason = ""  # why the last retryable failure happened

    def settle(self, token: str, problem: str | None, retry: bool) -> None:
        index = self.tokens.pop(token, None)
        if index is None:
            return
        if problem is not None:
            if retry:
                self.failed.append(index)
                self.reason = problem
            elif self.fatal is None:
                self.fatal = problem
        self.outstanding -= 1
        if self.outstanding == 0 and self.sent:
            self.done.set()


class JetStreamPublisher:
    """Pipelined publishing: many messages awaiting their stream ack at once, bounded."""

    def __init__(self, connector: NatsConnector) -> None:
        self._connector = connector
        self._config = connector.config
        self._prefix = ""
        self._waiting: dict[str, _Round] = {}
        self._counter = 0
        self._room: anyio.Event | None = None
        self._low = self._config.max_in_flight // 2

    async def start(self) -> None:
        """Subscribe to the inbox the stream acks come back to."""
        nc = self._connector.nc
        self._prefix = nc.new_inbox() + "."
        await nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) :]
        round_ = self._waiting.pop(token, None)
        if round_ is None:
            return  # an ack we stopped waiting for
        data = msg.data
        if data:
            round_.settle(token, *_ack_problem(data))
        else:
            status = (msg.headers or {}).get("Status", "")
            round_.settle(token, f"no stream answered (status {status or 'none'})", True)
        self._wake()

    def _wake(self, force: bool = False) -> None:
        """Let publishers waiting for room send again, once half the window is free."""
        room = self._room
        if room is not None and (force or len(self._waiting) <= self._low):
            self._room = None
            room.set()

    def abandon_all(self, reason: str) -> None:
        """Count every awaited ack as lost (the connection dropped): they are sent again."""
        for token, round_ in list(self._waiting.items()):
            round_.settle(token, reason, True)
        self._waiting.clear()
        self._wake(force=True)

    async def publish(
        self,
        topic: str,
        subject: str,
        stream: str,
        messages: Sequence[tuple[dict[str, str], bytes]],
    ) -> None:
        """Send every message and return once the stream acked each; PublishError otherwise."""
        where = f"publishing to topic {topic!r} (stream {stream!r})"
        deadline = time.monotonic() + self._config.publish_timeout
        todo: Sequence[int] = range(len(messages))
        delay = 0.05
        while True:
            round_ = _Round()
            try:
                await self._send_round(round_, subject, messages, todo, deadline, where)
                round_.sent = True
                if round_.outstanding:
                    wait = min(_ROUND_WAIT, max(deadline - time.monotonic(), 0.0))
                    with anyio.move_on_after(wait):
                        await round_.done.wait()
            finally:
                for token in list(round_.tokens):
                    self._waiting.pop(token, None)
                    round_.settle(token, "no ack from the stream in time", True)
                self._wake(force=True)
            if round_.fatal is not None:
                raise PublishError(f"{where}: the stream refused an event: {round_.fatal}")
            if not round_.failed:
                return
            todo = sorted(round_.failed)
            if time.monotonic() + delay >= deadline:
                raise PublishError(
                    f"{where}: {len(todo)} of {len(messages)} events were not acknowledged "
                    f"within publish_timeout={self._config.publish_timeout:g}s "
                    f"({round_.reason}); none of them may be assumed stored"
                )
            log.debug("%s: sending %d events again (%s)", where, len(todo), round_.reason)
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
            if round_.reason.startswith("no stream"):
                # The stream may have been deleted, or the server is still starting.
                streams = self._connector.streams
                streams.forget(topic)
                try:
                    await streams.ensure(topic, subject, stream, PublishError)
                except PublishError as exc:
                    round_.reason = str(exc)

    async def _send_round(
        self,
        round_: _Round,
        subject: str,
        messages: Sequence[tuple[dict[str, str], bytes]],
        todo: Sequence[int],
        deadline: float,
        where: str,
    ) -> None:
        nc = self._connector.nc
        waiting = self._waiting
        limit = self._config.max_in_flight
        prefix = self._prefix
        for position, index in enumerate(todo):
            while len(waiting) >= limit:
                if time.monotonic() >= deadline:
                    round_.failed.extend(todo[position:])
                    round_.reason = f"{limit} publishes stayed in flight (max_in_flight)"
                    return
                room = self._room
                if room is None:
                    self._room = room = anyio.Event()
                with anyio.move_on_after(_ROUND_WAIT):
                    await room.wait()
            self._counter += 1
            token = str(self._counter)
            headers, payload = messages[index]
            round_.tokens[token] = index
            round_.outstanding += 1
            waiting[token] = round_
            try:
                await nc.publish(subject, payload, reply=prefix + token, headers=headers)
            except NATS_ERRORS as exc:
                waiting.pop(token, None)
                if not is_retryable(exc):
                    round_.tokens.pop(token, None)
                    round_.outstanding -= 1
                    raise translate(PublishError, where, exc) from exc
                round_.settle(token, describe(exc), True)
                round_.failed.extend(todo[position + 1 :])
                return


class _Answer(msgspec.Struct):
    """A stream's answer to a publish: a PubAck names the stream, an error says why."""

    stream: Any = None
    error: Any = None


_ack_decoder = msgspec.json.Decoder(_Answer)


def _ack_problem(data: bytes) -> tuple[str | None, bool]:
    """What went wrong according to a stream's answer (None for an ack), and whether to
    retry. Decided from the decoded answer: its bytes may hold ``"error"`` in an ack too
    (a stream named so)."""
    try:
        answer = _ack_decoder.decode(data)
    except msgspec.DecodeError:
        return f"unreadable answer {data[:200]!r}", False
    error = answer.error
    if error is None and isinstance(answer.stream, str):
        return None, False
    if not isinstance(error, dict):
        return f"unexpected answer {data[:200]!r}", False
    code = error.get("code")
    description = error.get("description", "error")
    return f"{description} (JetStream code {code}, error {error.get('err_code')})", code == 503


# -- consuming -----------------------------------------------------------------------------


class JetStreamDelivery(Delivery):
    """A delivery from a JetStream pull consumer; ack and nack answer the server."""

    __slots__ = ("_consumer", "_msg", "_settled")

    def __init__(
        self,
        consumer: JetStreamConsumer,
        msg: Msg,
        event: Event,
        sequence: int,
        attempt: int,
        timestamp: float,
    ) -> None:
        # The base's fields, set directly: this runs once per message on the hot path.
        self.event = event
        self.topic = consumer.topic
        self.partition = 0
        self.offset = sequence
        self.key = event.partitionkey
        self.attempt = attempt
        self.timestamp = timestamp
        self._consumer = consumer
        self._msg = msg
        self._settled = False

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        consumer = self._consumer
        consumer.outstanding.discard(self)
        try:  # Msg.ack without its checks and wrappers: once per message
            await consumer.nc.publish(self._msg.reply, _ACK)  # type: ignore[union-attr]
        except NATS_ERRORS as exc:
            log.debug("ack failed, ignored: %s", describe(exc))

    async def nack(self, delay: float = 0.0) -> None:
        if self._settled:
            return
        self._settled = True
        self._consumer.outstanding.discard(self)
        with tolerated("nack"):
            await self._msg.nak(delay=delay if delay > 0 else None)

    async def touch(self) -> None:
        """Restart the consumer's ``ack_wait`` for this message (a JetStream progress ack)."""
        if not self._settled:
            with tolerated("progress ack"):
                await self._msg.in_progress()

    async def give_back(self) -> None:
        """Nack at once, for a member that leaves without having acked."""
        if not self._settled:
            self._settled = True
            with tolerated("nack on leaving"):
                await self._msg.nak()


class JetStreamConsumer(Consumer):
    """One member of a group: pulls from the group's durable consumer."""

    def __init__(
        self, connector: NatsConnector, topic: str, group: str, start: StartPosition
    ) -> None:
        self._connector = connector
        self.topic = topic
        self.group = group
        self._start_at = start
        self._puller: Puller | None = None
        self.nc: NATS | None = None
        self._scope: anyio.CancelScope | None = None
        self._alive = 0.0  # when the consumer last gave something, or was checked
        self._joined = 0.0  # wall-clock time the member joined (start() returned)
        self.outstanding: set[JetStreamDelivery] = set()
        self._pending: int | None = None  # num_pending of the last message fetched
        self.redelivery_timeout = float(connector.config.consumer.ack_wait)
        self._ack_limit = connector.config.consumer.max_ack_pending

    async def _start(self) -> None:
        connector = self._connector
        subject, stream = connector.route(self.topic, SubscribeError)
        await connector.streams.ensure(self.topic, subject, stream, SubscribeError)
        durable = escape_name(self.group)
        js = connector.js
        with translated(SubscribeError, self._where(stream)):
            await self._ensure_consumer(js, stream, durable, subject)
            self.nc = connector.nc
            api = getattr(js, "_prefix", "$JS.API")  # nats-py's API prefix (a domain's)
            next_subject = f"{api}.CONSUMER.MSG.NEXT.{stream}.{durable}"
            puller = Puller(self.nc, next_subject, 128, self._ack_limit // 2)
            await puller.start()
            self._puller = puller
        self._alive = time.monotonic()
        self._joined = time.time()
        connector.consumers.add(self)

    def _where(self, stream: str) -> str:
        return f"joining group {self.group!r} on topic {self.topic!r} (stream {stream!r})"

    async def _recheck(self) -> None:
        """Make the group's consumer again if it is gone (deleted by someone, or lost with
        a memory-storage stream when the server restarted): a pull from a consumer that
        does not exist just finds nothing, for ever."""
        self._alive = time.monotonic()
        connector = self._connector
        subject, stream = connector.route(self.topic, SubscribeError)
        durable = escape_name(self.group)
        with translated(SubscribeError, f"checking the consumer of {self._describe()}"):
            try:
                await connector.js.consumer_info(stream, durable)
                return
            except NATS_ERRORS as exc:
                if not is_not_found(exc):
                    raise
        log.warning(
            "the JetStream consumer %r of %s on stream %r is gone; making it again",
            durable,
            self._describe(),
            stream,
        )
        connector.streams.forget(self.topic)
        await connector.streams.ensure(self.topic, subject, stream, SubscribeError)
        with translated(SubscribeError, self._where(stream)):
            await self._ensure_consumer(connector.js, stream, durable, subject, self._resume())

    def _resume(self) -> datetime | None:
        """Where a consumer made again starts, for ``latest``: the group's progress went
        with the old one, so from a second before this member joined (for the server's
        clock), or from the store time of the oldest message it holds unacked if older
        (its ack would go to the deleted consumer). Events since then come again (at
        least once); none stored while the consumer was gone is skipped, as a fresh
        ``latest`` would. (A time, not a sequence: a stream made again numbers from 1.)
        None for ``earliest`` or a time: the original start still holds, again with
        repeats and no loss."""
        if self._start_at != "latest":
            return None
        stamp = self._joined - _CLOCK_SLACK
        held = [d.timestamp for d in self.outstanding if d.timestamp is not None]
        if held:  # the store time is in ns, this float and datetime are not: step back
            stamp = min(stamp, min(held) - _CLOCK_SLACK)
        return datetime.fromtimestamp(stamp, UTC)

    async def _ensure_consumer(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        subject: str,
        resume: datetime | None = None,
    ) -> None:
        where = self._where(stream)
        try:
            info = await js.consumer_info(stream, durable)
        except NATS_ERRORS as exc:
            if not is_not_found(exc):
                raise
        else:
            _check_consumer(info.config, subject, where)
            self._redelivery_from(info.config)
            return
        settings = self._connector.config.consumer
        start = self._start_at
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait,
            max_deliver=settings.max_deliver,
            max_ack_pending=settings.max_ack_pending,
            filter_subject=subject,
            inactive_threshold=settings.inactive_threshold,
        )
        if resume is not None:  # made again: see _resume
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = resume
        elif start == "earliest":
            config.deliver_policy = DeliverPolicy.ALL
        elif start == "latest":
            config.deliver_policy = DeliverPolicy.NEW
        elif isinstance(start, datetime):
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = start
        else:
            raise SubscribeError(f"start must be 'earliest', 'latest' or a datetime, got {start!r}")
        try:
            await js.add_consumer(stream, config)
        except NATS_ERRORS as exc:
            # Another member may have created it at the same moment: join that one.
            try:
                info = await js.consumer_info(stream, durable)
            except NATS_ERRORS:
                raise exc from None
            _check_consumer(info.config, subject, where)
            self._redelivery_from(info.config)

    def _redelivery_from(self, config: ConsumerConfig) -> None:
        """The group's consumer was made before (maybe with another ``ack_wait``): its
        own settings are what the server applies."""
        if config.ack_wait:
            self.redelivery_timeout = float(config.ack_wait)
        if config.max_ack_pending and config.max_ack_pending > 0:
            self._ack_limit = config.max_ack_pending

    async def fetch(self, max_events: int = 256, timeout: float | None = None) -> list[Delivery]:
        self._check_fetch()
        puller = self._puller
        if puller is None:
            raise LifecycleError("start the consumer first: 'async with connector.subscribe(...)'")
        deadline = None if timeout is None else time.monotonic() + timeout
        batch = max(1, max_events)
        # Two to eight batches asked for while messages flow: the next arrives while this
        # one is handled; a long poll asks for one (see eventmesh_nats._pull).
        puller.size(batch)
        where = f"fetching for {self._describe()}"
        while True:
            # Take first: taking reads what arrived, and a status among it may end the last
            # request; asked after, top_up sees that and asks again (asked before, this
            # member would wait out a poll with nothing asked for).
            msgs = puller.take(batch)
            try:
                with translated(SubscribeError, where):
                    await puller.top_up()
            except BaseException:
                puller.buffer.extendleft(reversed(msgs))  # still held: handed out next time
                raise
            if msgs:
                self._alive = time.monotonic()
                return self._deliveries(msgs)
            if self.closed:
                return []
            wait = _POLL if deadline is None else min(deadline - time.monotonic(), _POLL)
            if puller.refused:
                wait = min(wait, _REFUSED_WAIT)  # ask again after the puller's back-off
            with anyio.CancelScope() as scope:
                self._scope = scope
                try:
                    await puller.wait(max(wait, 0.01))
                finally:
                    self._scope = None
            if puller.buffer:
                continue
            if self.closed:
                return []
            now = time.monotonic()
            recheck = float(self._connector.config.consumer.recheck)
            if puller.refused.startswith("status 503") or "Deleted" in puller.refused:
                recheck = min(recheck, 2 * _REFUSED_WAIT)  # no consumer answers: gone?
            if now - self._alive >= recheck:
                await self._recheck()
            if deadline is not None and now >= deadline:
                return []

    def _deliveries(self, msgs: list[Msg]) -> list[Delivery]:
        decode = self._connector.decode
        out: list[JetStreamDelivery] = []
        append = out.append
        for msg in msgs:
            # The reply subject is the metadata: $JS.ACK.<stream>.<consumer>.<delivered>.
            # <stream seq>.<consumer seq>.<ns>.<pending> (v2 adds a domain and an account
            # hash before the stream and a token after); parsed here, not by Msg.metadata.
            tokens = msg.reply.split(".")
            base = 2 if len(tokens) == 9 else 4
            try:
                stream = tokens[base]
                attempt = int(tokens[base + 2])
                sequence = int(tokens[base + 3])
                stamp = int(tokens[base + 5]) / 1e9
            except (IndexError, ValueError):
                try:
                    meta = msg.metadata
                except _NOT_JETSTREAM as exc:
                    # No JetStream ack subject: not from the consumer, but sent to this
                    # member's inbox by some other client. Nothing to deliver or ack.
                    log.warning(
                        "%s: skipped a message on the pull inbox that JetStream did not "
                        "send (reply subject %r: %s)",
                        self._describe(),
                        msg.reply[:200],
                        describe(exc),
                    )
                    continue
                stream, attempt, sequence = meta.stream, meta.num_delivered, meta.sequence.stream
                stamp = meta.timestamp.timestamp()
            event = decode(msg, stream, sequence, stamp)
            append(JetStreamDelivery(self, msg, event, sequence, attempt, stamp))
        if out:
            self.outstanding.update(out)
            last_msg = out[-1]._msg
            last = last_msg.reply.split(".")
            try:
                self._pending = int(last[8 if len(last) == 9 else 10])
            except (IndexError, ValueError):
                with contextlib.suppress(*_NOT_JETSTREAM):
                    self._pending = last_msg.metadata.num_pending
        return cast("list[Delivery]", out)

    def lag(self) -> int | None:
        """The group consumer's messages not yet delivered (``num_pending`` of the last
        message fetched) plus those this member holds unacked; None before a fetch."""
        pending = self._pending
        return None if pending is None else pending + len(self.outstanding)

    async def _close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        self._connector.consumers.discard(self)
        puller = self._puller
        if puller is None:
            return
        with anyio.CancelScope(shield=True):
            left: list[Msg] = []
            with tolerated(f"leaving group {self.group!r}"):
                left = await puller.stop()
            # What this member holds unacked goes back to the group now, not after ack_wait:
            # deliveries handed out, and messages received that fetch never returned.
            for delivery in list(self.outstanding):
                await delivery.give_back()
            self.outstanding.clear()
            for msg in left:
                with tolerated("nack on leaving"):
                    await msg.nak()


def _check_consumer(config: ConsumerConfig, subject: str, where: str) -> None:
    if config.deliver_subject:
        raise SubscribeError(
            f"{where}: a push consumer named {config.durable_name!r} already exists; "
            "delete it or use another group name"
        )
    if config.filter_subject and config.filter_subject != subject:
        raise SubscribeError(
            f"{where}: consumer {config.durable_name!r} exists with filter subject "
            f"{config.filter_subject!r}, not {subject!r}; delete it or use another group name"
        )
    policy = config.ack_policy
    if policy is not None and policy != AckPolicy.EXPLICIT:
        # 'all' acks every earlier delivery with a later one, 'none' counts each as acked
        # once sent: an event a member had not handled yet would never come back.
        name = policy.value if isinstance(policy, AckPolicy) else policy
        raise SubscribeError(
            f"{where}: consumer {config.durable_name!r} exists with ack policy {name!r}; "
            "eventmesh needs explicit acks (ack policy 'explicit') so that what a member "
            "did not handle is delivered again: delete the consumer (eventmesh makes it "
            "again) or use another group name"
        )
