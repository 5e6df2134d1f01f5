"""The local connector's state buckets: a key-value map in the store's ``state`` table."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio

from eventmesh.connectors import _local_jobs
from eventmesh.connectors._local_config import check_text
from eventmesh.connectors.base import StateStore
from eventmesh.errors import RejectedError

if TYPE_CHECKING:
    from eventmesh.connectors.local import LocalConnector

__all__ = ["LocalState", "Watch"]


class Watch:
    """One ``watch()`` iterator's changes not yet taken, the last per key."""

    __slots__ = ("changes", "wakeup")

    def __init__(self) -> None:
        self.changes: OrderedDict[str, bytes | None] = OrderedDict()
        self.wakeup = anyio.Event()


class LocalState(StateStore):
    """A bucket of the ``state`` table; :meth:`watch` reports the changes made through
    this connector (one process holds the store)."""

    def __init__(self, connector: LocalConnector, bucket: str) -> None:
        self._connector = connector
        self._bucket = bucket

    async def load(self) -> dict[str, bytes]:
        c = self._connector
        c._check_open()
        return await c._read(c._reader_state, self._bucket)

    async def put(self, key: str, value: bytes) -> None:
        value = bytes(value)
        await self._change(_local_jobs.PUT_STATE, (self._bucket, key, value), key, value)

    async def delete(self, key: str) -> None:
        await self._change(_local_jobs.DELETE_STATE, (self._bucket, key), key, None)

    async def _change(self, sql: str, row: tuple[Any, ...], key: str, value: bytes | None) -> None:
        c = self._connector
        c._check_open()
        if not isinstance(key, str) or not key:
            raise RejectedError(f"a state key must be a non-empty string, got {key!r}")
        # Refused here, alone: in the writer it would fail every write of its commit.
        check_text(f"state key (bucket {self._bucket!r})", key, RejectedError)
        await c._submit(
            _local_jobs.Sql(sql, [row], after=lambda: c._notify(self._bucket, key, value))
        )

    async def watch(self) -> AsyncIterator[tuple[str, bytes | None]]:
        c = self._connector
        c._check_open()
        watch = Watch()
        watchers = c._watchers.setdefault(self._bucket, set())
        watchers.add(watch)
        try:
            while True:
                while watch.changes:
                    yield watch.changes.popitem(last=False)
                if not c.is_open:
                    return
                watch.wakeup = anyio.Event()
                await watch.wakeup.wait()
        finally:
            watchers.discard(watch)
