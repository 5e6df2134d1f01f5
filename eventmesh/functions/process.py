"""A pool of worker processes for one function that starts on demand and scales to zero.

The pool is empty until the first invocation; that one starts the processes (a
``spawn`` context, so a worker shares no state with the mesh) and waits until a worker
has imported the handler: the **cold start**, measured, logged and kept in the
function's stats. The cold start is not part of an invocation's timeout: it has its own
bound, :data:`COLD_START_TIMEOUT`, past which the start fails (a retryable
``DeliveryError``) and the starting processes are stopped. A caller that stops waiting
(cancelled) leaves the start running for the next one. After ``idle_timeout`` seconds
with no invocation running, the workers are stopped; the next invocation starts them
again.

A worker that dies mid-invocation breaks the pool: every invocation in it fails with a
retryable ``DeliveryError`` (so the events are retried under their policy) and the next
one starts a fresh pool. An invocation whose wait was abandoned (its timeout passed)
while its call ran recycles the pool: the pool's processes take no new work, the next
invocation starts a fresh pool, and :meth:`WorkerPool.watch` (or closing) stops the old
processes once their other calls finished, terminating them after a grace period.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal, Self

import anyio
import anyio.to_thread

from eventmesh._lifecycle import ClosedOnExit
from eventmesh.errors import ClosedError, DeliveryError, LifecycleError
from eventmesh.functions import _worker
from eventmesh.functions.stats import FunctionStats

__all__ = ["COLD_START_TIMEOUT", "WorkerPool", "check_not_bootstrapping"]

log = logging.getLogger(__name__)

_GRACE = 10.0
"""Seconds workers get to exit on a stop before they are terminated."""

COLD_START_TIMEOUT = 120.0
"""Seconds a cold start (spawning the workers and importing the handler) may take."""


_GUARD = (
    'put the code that starts the mesh under `if __name__ == "__main__":` '
    "(docs/functions.md, isolation: process)"
)


def check_not_bootstrapping(what: str) -> None:
    """Raise ``LifecycleError`` when called while a spawned worker process imports the
    program's main module: the program has no ``if __name__ == "__main__":`` guard, so
    the worker runs the program again instead of the handler, and the mesh that started
    it waits for a worker that never gets ready. Raising ends that worker's start (the
    error on its stderr says why) rather than letting it run a second mesh.

    The check is the one ``multiprocessing`` itself makes before it starts a process
    (the ``_inheriting`` flag a spawned process holds while it prepares).
    """
    # parent_process() is still None then: it is set after the main module's import.
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise LifecycleError(
            f"{what} was started while this worker process was importing the program's "
            'main module: the program has no `if __name__ == "__main__":` guard, so a '
            "worker process of a function with isolation: process runs the whole program "
            f"again instead of the handler; {_GUARD}"
        )


class WorkerPool(ClosedOnExit):
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
        self.slots = anyio.CapacityLimiter(workers)
        """One per worker: an invocation holds one from before it is submitted until it
        ends, so none waits in the executor's queue, where its timeout would run while
        it waits for another call (and a timeout there would recycle the pool)."""
        self.idle_timeout = idle_timeout
        self.stats = stats or FunctionStats()
        self.pids: set[int] = set()
        """The process ids of workers known to be running (those that answered)."""
        self._executor: ProcessPoolExecutor | None = None
        self._outstanding: dict[Future[Any], ProcessPoolExecutor] = {}
        """Calls submitted and not finished, with the executor running each."""
        self._hung: set[Future[Any]] = set()
        """Calls whose caller gave up (a timeout) while they ran."""
        self._retiring: list[ProcessPoolExecutor] = []
        """Executors recycled after a hung call, to stop."""
        self._last_used = time.monotonic()
        self._start_lock = anyio.Lock()
        # A start in progress: its executor, the worker's answer once it has imported
        # the handler, and when it began. Kept here, not in a caller's task, so a caller
        # that gives up does not end it.
        self._booting: ProcessPoolExecutor | None = None
        self._boot: asyncio.Future[int] | None = None
        self._boot_began = 0.0
        self._state: Literal["new", "open", "closed"] = "new"

    @property
    def state(self) -> str:
        """``cold`` (no worker), ``starting`` or ``warm``."""
        if self._executor is None:
            return "starting" if self._booting is not None else "cold"
        return "warm"

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LifecycleError(f"the worker pool of {self.name!r} was entered twice")
        self._state = "open"
        return self

    async def close(self) -> None:
        """Stop the workers (terminating any still busy after a grace period)."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        executor, self._executor = self._executor, None
        booting, self._booting, self._boot = self._booting, None, None
        retiring, self._retiring = self._retiring, []
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:  # each with its grace, at once
                if executor is not None:
                    tg.start_soon(self._stop, executor, "the pool is closing")
                if booting is not None:
                    tg.start_soon(self._stop, booting, "the pool closed during its start")
                for old in retiring:
                    tg.start_soon(self._stop, old, "a call in it timed out")

    async def watch(self) -> None:
        """Stop the workers once idle for ``idle_timeout``, and those recycled after a
        hung call; runs until cancelled."""
        interval = max(0.02, min(self.idle_timeout / 4, 1.0))
        while True:
            await anyio.sleep(interval)
            while self._retiring:
                await self._stop(self._retiring.pop(0), "a call in it timed out")
            executor = self._executor
            if executor is None and self._boot is not None and self._boot.done():
                if not self._start_lock.locked():  # a start no caller waited out
                    try:
                        await self.ready()
                    except DeliveryError:
                        pass  # stopped and logged; the next invocation starts again
                continue
            if executor is None or self._start_lock.locked():
                continue
            if any(used is executor for used in list(self._outstanding.values())):
                continue
            if time.monotonic() - self._last_used >= self.idle_timeout:
                self._executor = None
                await self._stop(executor, f"idle for {self.idle_timeout:g}s")

    async def _stop(self, executor: ProcessPoolExecutor, why: str) -> None:
        # ProcessPoolExecutor has no public list of its processes; this one attribute
        # is the only way to join and, past the grace period, terminate them.
        processes = list(getattr(executor, "_processes", {}).values())
        calls = [f for f, used in list(self._outstanding.items()) if used is executor]
        others = [f for f in calls if f not in self._hung]
        hung = len(others) < len(calls)
        executor.shutdown(wait=False, cancel_futures=True)

        def join() -> None:
            if hung:  # a hung worker never exits: wait for the other calls only
                concurrent.futures.wait(others, timeout=_GRACE)
            else:
                deadline = time.monotonic() + _GRACE
                for proc in processes:
                    proc.join(max(0.0, deadline - time.monotonic()))
            for proc in processes:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(1.0)
                if proc.is_alive():  # it ignores SIGTERM: it would outlive the mesh
                    proc.kill()
                    proc.join(1.0)

        await anyio.to_thread.run_sync(join, abandon_on_cancel=True)
        if self._executor is None and self._booting is None:
            self.pids.clear()
            self.stats.workers_alive = 0
        log.info("function %s: worker processes stopped (%s)", self.name, why)

    # -- invoking ------------------------------------------------------------------------

    async def ready(self) -> ProcessPoolExecutor:
        """The running workers; starts them when there are none (the cold start) and
        waits, up to :data:`COLD_START_TIMEOUT`, until one has imported the handler.

        Raises a retryable ``DeliveryError`` when the start fails or overruns its
        bound, ``ClosedError`` once the pool is closed. A caller cancelled while it
        waits leaves the start running; the next caller waits for the same one.
        """
        executor = self._executor
        if executor is not None:
            return executor
        async with self._start_lock:
            if self._executor is not None:
                return self._executor
            if self._state != "open":
                raise ClosedError(f"the worker pool of function {self.name!r} is closed")
            if self._boot is None:
                self._boot_began = time.monotonic()
                self._booting = ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
                )
                self._boot = asyncio.wrap_future(self._booting.submit(_worker.ready, self.path))
            boot, booting = self._boot, self._booting
            assert booting is not None
            left = self._boot_began + COLD_START_TIMEOUT - time.monotonic()
            try:
                if not boot.done():
                    with anyio.fail_after(max(left, 0.0)):
                        await asyncio.shield(boot)  # a cancelled caller leaves it running
                pid = boot.result()
            except Exception as exc:
                self._booting = self._boot = None
                with anyio.CancelScope(shield=True):
                    await self._stop(booting, "its start failed")
                if isinstance(exc, TimeoutError):
                    why = f"took longer than {COLD_START_TIMEOUT:g}s (the cold-start bound)"
                elif isinstance(exc, BrokenProcessPool):
                    why = (
                        "it exited while starting, before it imported the handler; its "
                        "error is on stderr. If the program that starts the mesh has no "
                        '`if __name__ == "__main__":` guard, the worker ran the program '
                        f"again: {_GUARD}"
                    )
                else:
                    why = f"{type(exc).__name__}: {exc}"
                raise DeliveryError(
                    f"function {self.name!r}: the worker process could not start ({why}); retrying"
                ) from exc
            self._booting = self._boot = None
            took = time.monotonic() - self._boot_began
            self.pids.add(pid)
            self.stats.cold_starts += 1
            self.stats.last_cold_start = took
            self.stats.workers_alive = len(getattr(booting, "_processes", {})) or 1
            log.info(
                "function %s: cold start took %.0f ms (worker pid %d)", self.name, took * 1000, pid
            )
            self._last_used = time.monotonic()
            self._executor = booting
            return booting

    async def run(self, batch: bool, payload: bytes) -> tuple[str, Any]:
        """Invoke the handler in a worker on the encoded ``payload``; what it answered
        (see :func:`eventmesh.functions._worker.invoke`). A dead worker raises a
        retryable ``DeliveryError``."""
        executor = await self.ready()
        try:
            future = executor.submit(_worker.invoke, self.path, batch, payload)
        except (BrokenProcessPool, RuntimeError) as exc:
            await self._discard(executor)
            raise DeliveryError(
                f"function {self.name!r}: the worker pool is broken ({exc}); retrying"
            ) from exc
        self._outstanding[future] = executor
        future.add_done_callback(self._finished)
        try:
            return await asyncio.wrap_future(future)
        except anyio.get_cancelled_exc_class():
            if not future.cancel() and not future.done():  # it runs: its worker hangs
                self._retire(executor, future)
            raise
        except BrokenProcessPool as exc:
            await self._discard(executor)
            raise DeliveryError(
                f"function {self.name!r}: a worker process died during the invocation "
                f"({exc}); retrying"
            ) from exc

    def _finished(self, future: Future[Any]) -> None:
        # Called in the executor's thread, or in ours for a cancelled future.
        self._outstanding.pop(future, None)
        self._hung.discard(future)
        self._last_used = time.monotonic()

    def _retire(self, executor: ProcessPoolExecutor, future: Future[Any]) -> None:
        """Recycle the executor a hung call runs in: no new work goes to it, and the
        next invocation starts a fresh pool instead of queueing behind the call."""
        self._hung.add(future)
        if future.done():  # it ended meanwhile (_finished ran already)
            self._hung.discard(future)
            return
        if self._executor is executor:
            self._executor = None
            self._retiring.append(executor)
            self.pids.clear()
            self.stats.workers_alive = 0
            log.warning(
                "function %s: a call still ran when its caller stopped waiting (its "
                "timeout, or the mesh closing); its worker processes are recycled "
                "(terminated once their other calls finished)",
                self.name,
            )

    async def _discard(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is executor:
            self._executor = None
            with anyio.CancelScope(shield=True):
                await self._stop(executor, "a worker died")
