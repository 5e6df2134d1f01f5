"""Where the sidecar keeps the subscriptions made through its API, so that they survive a
restart and are shared by every sidecar on the same backend.

A subscription is stored in the state bucket ``subscriptions``
(:meth:`Connector.state <eventmesh.connectors.base.Connector.state>`) of the connector
its topic routes to: a table of the local store, the compacted Kafka topic
``eventmesh.state.subscriptions``, the NATS KV bucket ``EVENTMESH_STATE_subscriptions``.
A topic on a connector that keeps no state (``memory``, NATS in core mode) keeps its
subscriptions in memory only, as before. The key is the subscription's id; the value is
a :class:`StoredSubscription` as JSON: the request body as it was sent (with the id the
sidecar chose when it had none), who made it, and whether its group is its own. Header
values and the signing secret are stored as sent, since the sidecar must send them again
after a restart: give the bucket the protection the broker's data has. Nothing that was
not in the request is stored.

On start the registry loads every bucket and starts each subscription again under its
stored id and group, so delivery resumes from the group's committed position; it then
follows each bucket (:meth:`SubscriptionStores.follow`) to start and stop what other
sidecars create and delete.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import anyio
import msgspec

from eventmesh.connectors.base import StateStore
from eventmesh.errors import ClosedError, ConfigError, ConnectorError
from eventmesh.mesh import Mesh

__all__ = ["BUCKET", "StoredSubscription", "SubscriptionStores", "decode", "encode"]

log = logging.getLogger(__name__)

BUCKET = "subscriptions"
"""The state bucket the subscriptions are kept in, on each connector that has one."""

_RETRY_FIRST = 0.5
_RETRY_MAX = 30.0


class StoredSubscription(msgspec.Struct, frozen=True, kw_only=True):
    """One API subscription as stored (version 1)."""

    version: int = 1
    spec: dict[str, Any]
    """The request body as sent, with its ``id`` (chosen by the sidecar when absent)."""
    origin: Literal["api", "grpc"] = "api"
    owner: str | None = None
    """The principal that made it with auth on (None: made with auth off)."""
    via: Literal["token", "jwt", "cert", "anonymous"] | None = None
    """How the owner proved who it was."""
    owns_group: bool = False
    """Its group is named after a generated id (see ``Record.owns_group``)."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StoredSubscription)


def encode(stored: StoredSubscription) -> bytes:
    """The stored form of ``stored``."""
    return _encoder.encode(stored)


def decode(key: str, data: bytes) -> StoredSubscription:
    """The subscription stored under ``key``; ConfigError when it is not one, or is
    stored under another id."""
    try:
        stored = _decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ConfigError(f"the stored subscription {key!r} cannot be read: {exc}") from exc
    if stored.spec.get("id") != key:
        raise ConfigError(
            f"the stored subscription {key!r} names id {stored.spec.get('id')!r}; it was not "
            "written by this sidecar's registry"
        )
    return stored


Apply = Callable[[StateStore, str, bytes | None], Awaitable[None]]
"""What :meth:`SubscriptionStores.follow` calls for each change: the store, the key, and
the new value (None: deleted)."""


class SubscriptionStores:
    """The ``subscriptions`` bucket of each of a mesh's connectors that keeps state."""

    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh
        self._stores: dict[int, tuple[str, StateStore]] = {}

    def open(self) -> None:
        """Look up each connector's bucket (the mesh must be open)."""
        for name, connector in self._mesh.connectors.items():
            store = connector.state(BUCKET)
            if store is not None:
                self._stores[id(connector)] = (name, store)
                log.info("subscriptions made through the API are stored on connector %r", name)

    @property
    def stores(self) -> Mapping[int, tuple[str, StateStore]]:
        """Each bucket with the name of its connector."""
        return self._stores

    def for_topic(self, topic: str) -> StateStore | None:
        """The bucket a subscription to ``topic`` is stored in: its connector's, or None
        when that connector keeps no state."""
        found = self._stores.get(id(self._mesh.connector(topic)))
        return found[1] if found is not None else None

    async def follow(self, name: str, store: StateStore, apply: Apply) -> None:
        """Call ``apply`` for every change to ``store`` until the connector closes; a
        failed watch is logged and begun again, backing off up to 30 s."""
        delay = _RETRY_FIRST
        while True:
            changes = store.watch()
            try:
                async for key, value in changes:
                    delay = _RETRY_FIRST
                    try:
                        await apply(store, key, value)
                    except Exception:  # one change must not stop the others
                        log.exception("applying the stored change to subscription %s failed", key)
                return  # the connector closed
            except ClosedError:
                return
            except ConnectorError as exc:
                log.warning(
                    "following the subscriptions stored on connector %r failed (%s); "
                    "trying again in %.1f s",
                    name,
                    exc,
                    delay,
                )
            finally:
                aclose = getattr(changes, "aclose", None)  # an async generator's
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
            await anyio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)
