"""A pool of worker processes for one function that starts on demand and scales to zero.

The pool is empty until the first invocation; that one starts the processes (a
``spawn`` context, so a worker shares no state with the mesh) and waits until a worker
has imported the handler: the **cold start**, measured, logged and kept in the
function's stats. After ``idle_timeout`` seconds with no invocation running, the
workers are stopped; the next invocation starts them again.

A worker that dies mid-invocation breaks the pool: every invocation in it fails with a
retryable ``DeliveryError`` (so the events are retried under their policy) and the next
one starts a fresh pool. An invocation whose wait was abandoned (its timeout passed)
keeps its worker busy until the handler returns; the pool is not idle before then, and
closing the mesh terminates such a worker after a grace period.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.to_thread

from eventmesh.errors import ClosedError, DeliveryError, LifecycleError
from eventmesh.triggers import _worker
from eventmesh.triggers.stats import FunctionStats

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)

_GRACE = 10.0
"""Seconds workers get to exit on a stop before they are terminated."""


class WorkerPool:
    """Worker processes running the handler ``path`` (``"module:function"``).

    An async context manager; entering starts no process, closing stops them all.
    Scaling to zero needs :meth:`watch` running in the owner's task group.
    """

    def __init__(
        self,
        path: str,
        *,
        name: str,
        workers: int = 1,
        idle_timeout: float = 60.0,
        stats: FunctionStats | None = None,
    ) -> None:
        self.path = path
        self.name = name
        self.workers = workers
        self.idle_timeout = idle_timeout
        self.stats = stats or FunctionStats()
        self.pids: set[int] = set()
        """The process ids of workers known to be running (those that answered)."""
        self._executor: ProcessPoolExecutor | None = None
        self._outstanding: set[Future[Any]] = set()
        self._last_used = time.monotonic()
        self._start_lock = anyio.Lock()
        self._state: Literal["new", "open", "closed"] = "new"

    @property
    def state(self) -> str:
        """``cold`` (no worker), ``starting`` or ``warm``."""
        if self._executor is None:
            return "starting" if self._start_lock.locked() else "cold"
        return "warm"

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LifecycleError(f"the worker pool of {self.name!r} was entered twice")
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the workers (terminating any still busy after a grace period)."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        executor, self._executor = self._executor, None
        if executor is not None:
            with anyio.CancelScope(shield=True):
                await self._stop(executor, "the pool is closing")

    async def watch(self) -> None:
        """Stop the workers once idle for ``idle_timeout``; runs until cancelled."""
        interval = max(0.02, min(self.idle_timeout / 4, 1.0))
        while True:
            await anyio.sleep(interval)
            executor = self._executor
            if executor is None or self._outstanding or self._start_lock.locked():
                continue
            if time.monotonic() - self._last_used >= self.idle_timeout:
                self._executor = None
                await self._stop(executor, f"idle for {self.idle_timeout:g}s")

    async def _stop(self, executor: ProcessPoolExecutor, why: str) -> None:
        # ProcessPoolExecutor has no public list of its processes; this one attribute
        # is the only way to join and, past the grace period, terminate them.
        processes = list(getattr(executor, "_processes", {}).values())
        executor.shutdown(wait=False, cancel_futures=True)

        def join() -> None:
            deadline = time.monotonic() + _GRACE
            for proc in processes:
                proc.join(max(0.0, deadline - time.monotonic()))
            for proc in processes:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(1.0)

        await anyio.to_thread.run_sync(join, abandon_on_cancel=True)
        self.pids.clear()
        self.stats.workers_alive = 0
        log.info("function %s: worker processes stopped (%s)", self.name, why)

    # -- invoking ------------------------------------------------------------------------

    async def _executor_ready(self) -> ProcessPoolExecutor:
        executor = self._executor
        if executor is not None:
            return executor
        async with self._start_lock:
            if self._executor is not None:
                return self._executor
            if self._state != "open":
                raise ClosedError(f"the worker pool of function {self.name!r} is closed")
            started = time.monotonic()
            executor = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
            try:
                pid = await asyncio.wrap_future(executor.submit(_worker.ready, self.path))
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await self._stop(executor, "its start failed")
                if isinstance(exc, Exception):
                    raise DeliveryError(
                        f"function {self.name!r}: the worker process could not start "
                        f"({type(exc).__name__}: {exc}); retrying"
                    ) from exc
                raise
            took = time.monotonic() - started
            self.pids.add(pid)
            self.stats.cold_starts += 1
            self.stats.last_cold_start = took
            self.stats.workers_alive = len(getattr(executor, "_processes", {})) or 1
            log.info(
                "function %s: cold start took %.0f ms (worker pid %d)", self.name, took * 1000, pid
            )
            self._last_used = time.monotonic()
            self._executor = executor
            return executor

    async def run(self, batch: bool, payload: bytes) -> tuple[str, Any]:
        """Invoke the handler in a worker on the encoded ``payload``; what it answered
        (see :func:`eventmesh.triggers._worker.invoke`). A dead worker raises a
        retryable ``DeliveryError``."""
        executor = await self._executor_ready()
        try:
            future = executor.submit(_worker.invoke, self.path, batch, payload)
        except (BrokenProcessPool, RuntimeError) as exc:
            await self._discard(executor)
            raise DeliveryError(
                f"function {self.name!r}: the worker pool is broken ({exc}); retrying"
            ) from exc
        self._outstanding.add(future)
        future.add_done_callback(self._finished)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool as exc:
            await self._discard(executor)
            raise DeliveryError(
                f"function {self.name!r}: a worker process died during the invocation "
                f"({exc}); retrying"
            ) from exc

    def _finished(self, future: Future[Any]) -> None:
        # Called in the executor's thread, or in ours for a cancelled future.
        self._outstanding.discard(future)
        self._last_used = time.monotonic()

    async def _discard(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is executor:
            self._executor = None
            with anyio.CancelScope(shield=True):
                await self._stop(executor, "a worker died")
