"""The sidecar's subscriptions: those made through its API, and those of the config file.

A :class:`Registry` turns a subscription spec (the JSON body of ``POST /subscriptions``)
into a running mesh subscription: ``protocol: HTTP`` a push subscription whose sink is a
:class:`~eventmesh.delivery.webhook.WebhookSink`, ``protocol: pull`` an iterator-form
subscription behind a :class:`~eventmesh.server.pull.PullQueue`. With ``auth:`` on it
enforces the ACL and ownership; resources never show a secret. API subscriptions are
kept where their topic's events are (:mod:`eventmesh.server._substore`). See
docs/sidecar.md, 'Subscriptions' and 'Where subscriptions live'.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias
from urllib.parse import urlsplit

import anyio
import anyio.abc

from eventmesh._lifecycle import ClosedOnExit
from eventmesh._redact import MASK, redact_headers, redact_url
from eventmesh._status import NotFoundError
from eventmesh.auth import Guard, Principal, glob_match
from eventmesh.config import SinkConfig
from eventmesh.connectors.base import StateStore
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.delivery.stats import DeliveryStats
from eventmesh.errors import (
    ClosedError,
    ConfigError,
    ConnectorError,
    LifecycleError,
    PermissionDeniedError,
    SubscribeError,
)
from eventmesh.mesh import Mesh
from eventmesh.server._subspec import (
    SubscriptionSpec,
    config_fields,
    convert_body,
    parse,
    rekey,
    sink_settings,
    spec_fields,
)
from eventmesh.server._substore import StoredSubscription, SubscriptionStores, decode, encode
from eventmesh.server.pull import PullQueue
from eventmesh.subscription import Subscription

if TYPE_CHECKING:
    from eventmesh.delivery.webhook import WebhookSession

__all__ = ["Origin", "Record", "Registry", "SubscriptionSpec", "convert_body"]

log = logging.getLogger(__name__)

Origin: TypeAlias = Literal["config", "api", "grpc"]
"""Who made a subscription: the config file, the HTTP API, or the gRPC API."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")
_DEFAULT_DEAD_LETTER = DeliveryPolicy().dead_letter


@dataclass(eq=False)
class Record:
    """One subscription the sidecar knows of, with what runs it."""

    id: str
    origin: Origin
    fields: dict[str, Any]
    """The resource's fields as stored (everything but ``origin`` and ``stats``)."""
    subscription: Subscription | None = None
    """The running subscription (for a config one, looked up by name when needed)."""
    pull: PullQueue | None = None
    """The queue of a pull subscription."""
    done: anyio.Event | None = None
    """Set once the pull queue's task has returned (None for other kinds)."""
    owns_group: bool = False
    """Its group is named after a generated id, so nobody can mean to join it again:
    deleting the subscription deletes the group on the memory connector, which frees
    the events only it still needed."""
    owner: str | None = None
    """The principal that made it through an API with auth on (None: the config
    file's, or made with auth off)."""
    store: StateStore | None = None
    """The state store it is kept in (None: kept in memory only)."""
    value: bytes | None = None
    """What is stored for it there."""


class Registry(ClosedOnExit):
    """The subscriptions of a sidecar; an async context manager owning their tasks.

    :meth:`close` (or leaving the ``async with``) closes every subscription made through
    the API: long polls and streams waiting on them return at once.
    """

    def __init__(self, mesh: Mesh, *, guard: Guard | None = None) -> None:
        self.mesh = mesh
        self.guard = guard or Guard()
        self._records: dict[str, Record] = {}
        self._config: dict[str, Record] = {
            sub.name: Record(sub.name, "config", config_fields(sub))
            for sub in mesh.config.subscriptions
        }
        self._tg: anyio.abc.TaskGroup | None = None
        self._state = "new"
        self._stores = SubscriptionStores(mesh)
        self._skipped: dict[str, bytes] = {}
        """Stored subscriptions that did not start, so a report again is not retried."""

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LifecycleError("a Registry can be entered once; create a new one")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = "open"
        try:
            await self._restore()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise
        return self

    async def _restore(self) -> None:
        """Start the subscriptions each store holds, then follow each store."""
        tg = self._check_open()
        self._stores.open()
        limiter = anyio.CapacityLimiter(8)  # Kafka members join their groups meanwhile

        async def revive(store: StateStore, key: str, value: bytes) -> None:
            async with limiter:
                await self._revive(store, key, value)

        for name, store in self._stores.stores.values():
            stored = await store.load()
            log.info("connector %r holds %d stored subscriptions", name, len(stored))
            async with anyio.create_task_group() as starting:
                for key, value in stored.items():
                    starting.start_soon(revive, store, key, value)
        for name, store in self._stores.stores.values():
            tg.start_soon(self._stores.follow, name, store, self._changed)

    async def _revive(self, store: StateStore, key: str, value: bytes) -> None:
        """Start a stored subscription; log and skip one that cannot start now (its spec
        no longer compiles, a limit or the ACL changed, its id is the config file's)."""
        try:
            stored = decode(key, value)
            owner = None
            if stored.owner is not None and self.guard.enabled:
                owner = Principal(stored.owner, stored.via or "token")
            await self._create(stored.spec, stored.origin, owner, (store, value, stored))
        except Exception as exc:
            if self._state != "open":
                return
            self._skipped[key] = value
            log.error("stored subscription %s is not started: %s", key, exc)

    async def _changed(self, store: StateStore, key: str, value: bytes | None) -> None:
        """Another sidecar (or this one) changed a stored subscription."""
        if value is not None and self._skipped.get(key) == value:
            return  # reported again, and would fail again
        self._skipped.pop(key, None)
        record = self._records.get(key)
        if record is not None and (record.store is not store or record.value is None):
            return  # another store's, or being created or deleted here
        if value is None:
            if record is not None:
                log.info("subscription %s was deleted by another sidecar", key)
                await self._drop(record)
            return
        if record is not None:
            if record.value == value:
                return  # what this sidecar wrote, or a report again
            log.info("subscription %s was replaced by another sidecar", key)
            await self._drop(record)
        await self._revive(store, key, value)

    async def _drop(self, record: Record) -> None:
        """Stop a subscription here without touching its store."""
        if self._records.get(record.id) is record:
            del self._records[record.id]
        if record.pull is not None:
            record.pull.close()
        with anyio.CancelScope(shield=True):
            await self._stop(record, None)

    async def close(self, timeout: float | None = None) -> None:
        """Close every API subscription, all at once: push deliveries in hand finish for
        up to ``timeout`` seconds (30 by default), pull waiters return, and what was not
        acked goes back to the group. Idempotent.

        This also leaves the registry's task group, so, as for the Mesh, call it where
        the ``async with`` would end it: not from inside a task group or cancel scope
        entered after the registry.
        """
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closing"
        records = list(self._records.values())
        self._records.clear()
        try:
            with anyio.CancelScope(shield=True):
                for record in records:
                    if record.pull is not None:
                        record.pull.close()
                async with anyio.create_task_group() as tg:
                    for record in records:
                        tg.start_soon(self._stop, record, timeout)
        finally:
            self._state = "closed"
            tasks, self._tg = self._tg, None
            if tasks is not None:
                tasks.cancel_scope.cancel()  # nothing should be left; never wait on it
                await tasks.__aexit__(None, None, None)

    def _check_open(self) -> anyio.abc.TaskGroup:
        if self._state != "open" or self._tg is None:
            if self._state in ("closing", "closed"):
                raise ClosedError("the sidecar is shutting down; no new subscriptions")
            raise LifecycleError("the registry is not open; use it as 'async with Registry(mesh)'")
        return self._tg

    # -- reading -------------------------------------------------------------------------

    def get(self, id: str, *, principal: Principal | None = None) -> Record:
        """The subscription with this id; NotFoundError when there is none, and, when a
        ``principal`` is given, PermissionDeniedError unless it may manage it."""
        record = self._records.get(id) or self._config.get(id)
        if record is None:
            raise NotFoundError(
                f"no subscription {id!r} on this sidecar; GET /subscriptions lists them"
            )
        if principal is not None:
            self.authorize(record, principal)
        return record

    def list(self, *, principal: Principal | None = None) -> list[Record]:
        """Every subscription: the config file's first, then the API's in creation order;
        with a ``principal``, only those it may manage."""
        records = [*self._config.values(), *self._records.values()]
        guard = self.guard
        if principal is None or not guard.enabled:
            return records
        return [r for r in records if guard.may_manage(principal, r.owner, r.fields["topic"])]

    def authorize(self, record: Record, principal: Principal) -> None:
        """PermissionDeniedError unless ``principal`` may read, delete, pull, ack or
        stream ``record``: it made it, or has ``manage`` on its topic."""
        if self.guard.may_manage(principal, record.owner, record.fields["topic"]):
            return
        whose = f"principal {record.owner!r}" if record.owner else "the config file"
        raise PermissionDeniedError(
            f"principal {principal.name!r} may not use subscription {record.id!r}: it "
            f"belongs to {whose}, and no acl rule grants manage on topic "
            f"{record.fields['topic']!r}"
        )

    def resource(self, record: Record) -> dict[str, Any]:
        """The JSON resource of a subscription: its fields, ``origin`` and ``stats``
        (and ``owner`` when it has one), with every secret shown as ``***``."""
        subscription = record.subscription
        if subscription is None and record.origin == "config":
            subscription = next((s for s in self.mesh.subscriptions if s.name == record.id), None)
        stats = subscription.stats if subscription is not None else DeliveryStats()
        fields = record.fields
        if "sink" in fields:
            fields = {**fields, "sink": redact_url(fields["sink"])}
            settings = fields.get("protocolsettings")
            if settings is not None:
                settings = {**settings, "headers": redact_headers(settings["headers"])}
                if "signing_secret" in settings:
                    settings["signing_secret"] = MASK
                fields["protocolsettings"] = settings
        resource = {**fields, "origin": record.origin, "stats": stats.as_dict()}
        if record.owner is not None:
            resource["owner"] = record.owner
        return resource

    # -- creating and deleting -------------------------------------------------------------

    async def create(
        self, spec: Mapping[str, Any], *, origin: Origin = "api", owner: Principal | None = None
    ) -> Record:
        """Start a subscription from a spec; ConfigError naming the key for a bad one,
        LifecycleError when the id is taken. With an ``owner`` (the caller), the ACL
        decides (module docstring): PermissionDeniedError otherwise. When the topic's
        connector keeps state, the subscription is stored before this returns (a
        ConnectorError, and nothing started, when the store cannot be written)."""
        return await self._create(spec, origin, owner, None)

    async def _create(
        self,
        spec: Mapping[str, Any],
        origin: Origin,
        owner: Principal | None,
        restored: tuple[StateStore, bytes, StoredSubscription] | None,
    ) -> Record:
        tg = self._check_open()
        if not isinstance(spec, Mapping):
            raise ConfigError(
                f"a subscription is a JSON object, got {type(spec).__name__}",
            )
        parsed = parse(spec)
        sub_id = parsed.id if parsed.id is not None else uuid.uuid4().hex
        if not _ID.match(sub_id):
            raise ConfigError(
                f"{sub_id!r} is not a usable id: use up to 200 letters, digits, '.', '_' "
                "and '-', starting with a letter or digit",
                key="id",
            )
        if owner is not None:  # before anything that tells of other subscriptions
            self._permit(owner, parsed, parsed.group or sub_id)
        if sub_id in self._records or sub_id in self._config:
            raise LifecycleError(
                f"a subscription with id {sub_id!r} exists already; choose another id, or "
                f"DELETE /subscriptions/{sub_id} first"
            )
        protocol = parsed.protocol or ("HTTP" if parsed.sink is not None else "pull")
        settings = sink_settings(parsed) if protocol == "HTTP" else None
        fields = spec_fields(parsed, sub_id, protocol, settings)
        record = Record(
            sub_id,
            origin,
            fields,
            owns_group=parsed.id is None and not parsed.group,
            owner=owner.name if owner is not None and self.guard.enabled else None,
        )
        if restored is not None:
            record.store, record.value, stored = restored
            record.owns_group = stored.owns_group
        self._records[sub_id] = record  # reserved now: a second create with it gets 409
        try:
            if settings is not None:
                record.subscription = await self._push(parsed, sub_id, fields, settings, owner)
                await record.subscription.start()
                self._still_wanted(record)
            else:
                subscription = await self._subscribe(parsed, sub_id, fields, handler=None)
                record.subscription = subscription
                await subscription.start()
                tg = self._still_wanted(record)
                record.pull = PullQueue(subscription, ack_deadline=fields["ack_deadline"])
                record.done = anyio.Event()
                await tg.start(self._run_pull, record)
            if restored is None and parsed.persist:
                await self._store(record, spec, owner)
        except BaseException:
            self._records.pop(sub_id, None)
            if record.pull is not None:
                record.pull.close()
            if record.subscription is not None:
                with anyio.CancelScope(shield=True):
                    await record.subscription.close()
            raise
        log.info(
            "subscription %s %s (%s, topic %s)",
            sub_id,
            "created" if restored is None else "started from its store",
            protocol,
            parsed.topic,
        )
        return record

    async def _store(
        self, record: Record, spec: Mapping[str, Any], owner: Principal | None
    ) -> None:
        """Write a new subscription to its topic's store, if that keeps state."""
        store = self._stores.for_topic(record.fields["topic"])
        if store is None:
            return
        stored = StoredSubscription(
            spec={**spec, "id": record.id},
            origin="grpc" if record.origin == "grpc" else "api",
            owner=record.owner,
            via=owner.via if owner is not None and record.owner is not None else None,
            owns_group=record.owns_group,
        )
        record.store, record.value = store, encode(stored)
        await store.put(record.id, record.value)
        if self._state == "open" and self._records.get(record.id) is not record:
            # Deleted while it was being stored: that delete may have come first.
            with contextlib.suppress(ConnectorError):
                await store.delete(record.id)
        self._still_wanted(record)

    def _still_wanted(self, record: Record) -> anyio.abc.TaskGroup:
        """After an await in create: raise when the registry closed or the subscription
        was deleted meanwhile (the caller then closes what it started)."""
        tg = self._check_open()
        if self._records.get(record.id) is not record:
            raise LifecycleError(
                f"subscription {record.id!r} was deleted while it was being created"
            )
        return tg

    async def _run_pull(
        self, record: Record, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        assert record.pull is not None
        assert record.done is not None
        try:
            await record.pull.run(task_status=task_status)
        except Exception:
            log.exception("pull subscription %s stopped on an unexpected error", record.id)
        finally:
            record.done.set()

    def _permit(self, owner: Principal, spec: SubscriptionSpec, group: str) -> None:
        """PermissionDeniedError unless ``owner`` may subscribe to the spec's topic in
        ``group`` and publish to where it would publish (replies, dead letters)."""
        guard = self.guard
        if not guard.enabled:
            return
        guard.check(owner, "subscribe", topic=spec.topic, group=group)
        if spec.reply_to is not None:
            guard.check(owner, "publish", topic=spec.reply_to)
        if spec.delivery.dead_letter != _DEFAULT_DEAD_LETTER:  # the default comes with it
            dead = spec.delivery.dead_letter_topic(spec.topic, group)
            if dead is not None:
                guard.check(owner, "publish", topic=dead)

    async def _push(
        self,
        spec: SubscriptionSpec,
        sub_id: str,
        fields: dict[str, Any],
        settings: SinkConfig,
        owner: Principal | None = None,
    ) -> Subscription:
        from eventmesh.delivery.webhook import WebhookSink

        session = self.mesh.webhooks
        url = fields["sink"]
        try:
            await session.check_url(url)
            if owner is not None:
                session = await self._narrow(session, url, owner)
            sink = WebhookSink.from_config(url, settings, session=session)
        except ConfigError as exc:
            message = str(exc).removeprefix(f"{exc.key}: ") if exc.key else str(exc)
            raise ConfigError(message, key="sink") from exc
        return await self._subscribe(spec, sub_id, fields, handler=sink)

    async def _narrow(self, session: WebhookSession, url: str, owner: Principal) -> WebhookSession:
        """The session ``owner``'s webhooks go through: ``session``, or, when its ACL
        rules set ``webhook_networks``, one narrowed to them, which ``url`` must reach
        (PermissionDeniedError naming the rules otherwise)."""
        networks = self.guard.webhook_networks(owner)
        if networks is None:
            if not self.guard.enabled:
                return session
            # With auth on, the hosts the config file names are trusted by name for the
            # config's own subscriptions only: a caller's webhook must reach an address
            # inside server.webhook.allowed_networks (ConfigError on `sink` otherwise).
            unnamed = session.narrowed(session.allow.networks)
            await unnamed.check_url(url)
            return unnamed
        narrowed = session.narrowed(networks)
        try:
            await narrowed.check_url(url)
        except ConfigError as exc:
            rules = [
                f"acl[{i}].webhook_networks"
                for i, rule in enumerate(self.guard.acl.rules)
                if rule.webhook_networks and glob_match(rule.principal, owner.name)
            ]
            host = urlsplit(url).hostname
            raise PermissionDeniedError(
                f"principal {owner.name!r} may send webhooks only into "
                f"{', '.join(map(str, networks))} ({', '.join(rules)}), and {host!r} is "
                "not inside them; use a sink there, or have the rule widened"
            ) from exc
        return narrowed

    async def _subscribe(
        self, spec: SubscriptionSpec, sub_id: str, fields: dict[str, Any], *, handler: Any
    ) -> Subscription:
        filter_spec = spec.filters if spec.filters is not None else spec.filter
        try:
            # Compiled in a worker thread: the spec came from the network.
            compiled_filter, compiled_transform = await self.mesh.compile_specs(
                spec.topic, fields["group"], filter_spec, spec.transform
            )
            return self.mesh.subscribe(
                spec.topic,
                fields["group"],
                handler=handler,
                filter=compiled_filter,
                transform=compiled_transform,
                delivery=spec.delivery,
                start=spec.start,
                name=sub_id,
                reply_to=spec.reply_to,
            )
        except ConfigError as exc:
            raise rekey(exc, spec.topic, fields["group"], spec.filters is not None) from exc

    async def delete(self, id: str, *, principal: Principal | None = None) -> None:
        """Close an API subscription: deliveries in hand finish or go back to the group.
        NotFoundError for an unknown id, LifecycleError for one of the config file, and,
        with a ``principal``, PermissionDeniedError unless it may manage it."""
        if principal is not None:
            self.get(id, principal=principal)
        if id in self._config:
            raise LifecycleError(
                f"subscription {id!r} is defined in the config file; remove it there and "
                "restart the sidecar"
            )
        record = self._records.get(id)
        if record is None:
            raise NotFoundError(
                f"no subscription {id!r} on this sidecar; GET /subscriptions lists them"
            )
        if record.store is not None:  # first: when this fails, the subscription stays
            await record.store.delete(id)
        if self._records.get(id) is not record:
            return  # deleted meanwhile (by a concurrent call, or seen in the store)
        del self._records[id]
        if record.pull is not None:
            record.pull.close()
        with anyio.CancelScope(shield=True):
            await self._stop(record, None)
            connector = self.mesh.connector(record.fields["topic"])
            if record.owns_group:
                with contextlib.suppress(SubscribeError):  # joined by another: it stays
                    await connector.delete_group(record.fields["topic"], record.fields["group"])
        log.info("subscription %s deleted", id)

    async def _stop(self, record: Record, timeout: float | None) -> None:
        if record.subscription is not None:
            await record.subscription.close(timeout)
        if record.done is not None:
            await record.done.wait()
