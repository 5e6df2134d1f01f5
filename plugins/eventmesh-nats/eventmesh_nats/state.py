"""The mesh's durable key-value state on NATS: one JetStream key-value bucket per bucket.

:meth:`NatsConnector.state` (JetStream mode) returns a :class:`NatsStateStore` whose map
is the KV bucket ``{stream.name_prefix}STATE_{bucket}`` (``EVENTMESH_STATE_subscriptions``
by default), created on first use with a history of 1 and the ``stream.storage`` and
``stream.replicas`` of the connector's streams:

* ``put`` is a KV put (stored when the server acknowledged it), ``delete`` a KV delete;
* ``load`` reads the last value of every key through a watcher, up to the marker that
  says it has seen them all;
* ``watch`` is a KV watcher: it reports every key's current value first, then each
  change as it happens (the contract allows a key to be reported more than once), and
  ends when the connector closes.

Every process that names the same bucket on the same NATS account sees the same map.
nats-py's exceptions become ``ConnectError`` (reading, creating the bucket) or
``PublishError`` (writing) here, through :mod:`eventmesh_nats._errors`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import anyio
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from eventmesh.connectors.base import StateStore
from eventmesh.errors import ClosedError, ConnectError, PublishError
from eventmesh_nats._errors import tolerated, translated

if TYPE_CHECKING:
    from eventmesh_nats.connector import NatsConnector

__all__ = ["NatsStateStore"]

log = logging.getLogger(__name__)

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
_DELETED: Final = ("DEL", "PURGE")


class NatsStateStore(StateStore):
    """A bucket of the mesh's state kept in a JetStream KV bucket (module docstring)."""

    def __init__(self, connector: NatsConnector, bucket: str) -> None:
        self._connector = connector
        prefix = connector.config.stream.name_prefix
        self.bucket = f"{prefix}STATE_{_UNSAFE.sub('_', bucket)}"
        self._where = f"NATS key-value bucket {self.bucket!r}"
        self._kv: KeyValue | None = None
        self._lock = anyio.Lock()
        self._watchers: set[KeyValue.KeyWatcher] = set()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"connector {self._connector.name!r} is closed")

    async def _bucket(self) -> KeyValue:
        """The bucket, created with the connector's stream settings if it is missing."""
        if self._kv is not None:
            return self._kv
        async with self._lock:
            self._check()
            if self._kv is None:
                js = self._connector.js
                with translated(ConnectError, f"opening {self._where}"):
                    try:
                        kv = await js.key_value(self.bucket)
                    except nats.js.errors.BucketNotFoundError:
                        settings = self._connector.config.stream
                        storage = (
                            StorageType.FILE if settings.storage == "file" else StorageType.MEMORY
                        )
                        config = KeyValueConfig(
                            bucket=self.bucket,
                            history=1,
                            storage=storage,
                            replicas=settings.replicas,
                        )
                        kv = await js.create_key_value(config)
                self._kv = kv
        return self._kv

    async def close(self) -> None:
        """Stop every watcher (a watch then ends). Idempotent."""
        self._closed = True
        for watcher in list(self._watchers):
            await self._stop(watcher)

    async def _stop(self, watcher: KeyValue.KeyWatcher) -> None:
        self._watchers.discard(watcher)
        with anyio.CancelScope(shield=True), tolerated(f"stopping a watcher of {self._where}"):
            await watcher.stop()  # type: ignore[no-untyped-call]

    async def _watcher(self, where: str) -> KeyValue.KeyWatcher:
        kv = await self._bucket()
        self._check()
        with translated(ConnectError, where):
            watcher = await kv.watchall()
        self._watchers.add(watcher)
        return watcher

    # -- the StateStore contract -----------------------------------------------------------

    async def load(self) -> dict[str, bytes]:
        where = f"loading {self._where}"
        watcher = await self._watcher(where)
        timeout = float(self._connector.config.publish_timeout) * 3
        values: dict[str, bytes] = {}
        try:
            with translated(ConnectError, where), anyio.fail_after(timeout):
                async for entry in watcher:
                    if entry is None:  # the marker: every current value was reported
                        break
                    if entry.operation in _DELETED or entry.value is None:
                        values.pop(entry.key, None)
                    else:
                        values[entry.key] = entry.value
                else:
                    self._check()  # stopped by close
        except TimeoutError as exc:
            raise ConnectError(
                f"{where}: not every key arrived within {timeout:g} s; check the connection to NATS"
            ) from exc
        finally:
            await self._stop(watcher)
        return values

    async def put(self, key: str, value: bytes) -> None:
        kv = await self._bucket()
        with translated(PublishError, f"writing key {key!r} of {self._where}"):
            await kv.put(key, value)

    async def delete(self, key: str) -> None:
        kv = await self._bucket()
        with translated(PublishError, f"deleting key {key!r} of {self._where}"):
            await kv.delete(key)

    async def watch(self) -> AsyncIterator[tuple[str, bytes | None]]:
        watcher = await self._watcher(f"watching {self._where}")
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                if entry.operation in _DELETED:
                    yield entry.key, None
                else:
                    yield entry.key, entry.value or b""
        finally:
            await self._stop(watcher)
