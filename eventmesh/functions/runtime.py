"""The functions of a mesh: declarations turned into running subscriptions.

:class:`FunctionRuntime` is an async context manager the mesh enters for its lifespan.
It owns the worker pools of process-isolated functions (each stopped on close) and the
task group of correlation triggers. :meth:`FunctionRuntime.start` builds, per function,
a :class:`~eventmesh.functions.runner.FunctionRunner` and a subscription of the
function's consumer group on its trigger topic, whose sink is the runner (through a
:class:`~eventmesh.functions.limits.Batcher` for batches, a
:class:`~eventmesh.functions.correlate.Correlator` for correlated sets).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Protocol, Self

import anyio
import anyio.abc
import msgspec

from eventmesh._lifecycle import ClosedOnExit
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.errors import ConfigError, LifecycleError
from eventmesh.event import Event
from eventmesh.functions.correlate import Correlator
from eventmesh.functions.function import Function
from eventmesh.functions.invoker import (
    Invoke,
    http_invoker,
    is_async,
    process_invoker,
    python_invoker,
)
from eventmesh.functions.limits import Batcher
from eventmesh.functions.process import WorkerPool
from eventmesh.functions.runner import FunctionRunner
from eventmesh.observability.histogram import Histogram
from eventmesh.pipeline.compile import compile_pipeline
from eventmesh.pipeline.limits import DEFAULT_LIMITS, FilterLimits
from eventmesh.typing import Filter

if TYPE_CHECKING:
    from eventmesh.connectors.base import StartPosition
    from eventmesh.delivery.services import Services
    from eventmesh.delivery.webhook import WebhookSession
    from eventmesh.subscription import Subscription
    from eventmesh.typing import Handler

__all__ = ["FunctionRuntime", "Host"]

log = logging.getLogger(__name__)

_HTTP_TIMEOUT = 10.0


class Host(Protocol):
    """What the functions need of their mesh besides its :class:`Services`: subscribe and
    its webhook client."""

    def subscribe(
        self,
        topic: str,
        group: str,
        *,
        handler: Handler | None = None,
        filter: Any = None,
        transform: Any = None,
        delivery: DeliveryPolicy | Mapping[str, Any] | None = None,
        start: StartPosition = "latest",
        name: str | None = None,
        reply_to: str | None = None,
    ) -> Subscription: ...

    @property
    def webhooks(self) -> WebhookSession: ...


class FunctionRuntime(ClosedOnExit):
    """Runs ``functions`` on ``host``; enter it, then :meth:`start` once the host is open.
    Replies and dead letters go through ``services.publish``; ``services.tracing`` and
    ``services.measure`` give each function its spans and duration histogram."""

    def __init__(
        self,
        host: Host,
        functions: Sequence[Function],
        services: Services[Subscription],
        *,
        filter_limits: FilterLimits = DEFAULT_LIMITS,
    ) -> None:
        self._host = host
        self._services = services
        self._filter_limits = filter_limits
        self._functions = list(functions)
        seen: set[str] = set()
        for function in self._functions:
            if function.name in seen:
                raise ConfigError(f"a function named {function.name!r} is declared twice")
            seen.add(function.name)
        self._runners: dict[str, FunctionRunner] = {}
        self._pools: list[WorkerPool] = []
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._state = "new"

    @property
    def runners(self) -> list[FunctionRunner]:
        """The running functions, in declaration order."""
        return list(self._runners.values())

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LifecycleError("a FunctionRuntime can be entered once")
        async with AsyncExitStack() as stack:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._stack = stack.pop_all()
        self._state = "open"
        return self

    async def close(self) -> None:
        """Stop the correlation tasks and every worker pool. Idempotent."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        stack, self._stack = self._stack, None
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        if self._pools:  # all at once: N stuck pools take one grace period, not N
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as tg:
                    for pool in self._pools:
                        tg.start_soon(pool.close)
        if stack is not None:
            await stack.aclose()  # each pool shields its own stop

    async def start(self) -> None:
        """Start every declared function's subscription."""
        for function in self._functions:
            await self._start(function)

    async def _start(self, function: Function) -> None:
        assert self._stack is not None
        assert self._tg is not None
        spec = function.spec
        where = f"function {spec.name!r}"
        pool: WorkerPool | None = None
        call: Invoke
        if spec.url is not None:
            from eventmesh.delivery.webhook import WebhookSink

            timeout = float(spec.timeout) if spec.timeout is not None else _HTTP_TIMEOUT
            sink = WebhookSink(
                spec.url, session=self._host.webhooks, timeout=timeout, headers=spec.headers
            )
            call, kind = http_invoker(sink), "http"
        elif spec.isolation == "process":
            path = _handler_path(function, where)
            pool = WorkerPool(
                path,
                name=spec.name,
                workers=spec.workers,
                idle_timeout=float(spec.idle_timeout),
            )
            await self._stack.enter_async_context(pool)
            self._pools.append(pool)
            self._tg.start_soon(pool.watch)
            call, kind = process_invoker(pool, spec.name), "process"
        else:
            handler = function.handler
            if handler is None:
                from eventmesh._imports import import_callable

                assert spec.handler is not None  # check_function wants handler or url
                handler = import_callable(spec.handler, where=where)
            call = python_invoker(handler, threads=spec.concurrency)
            kind = "async" if is_async(handler) else "thread"
        runner = FunctionRunner(
            function,
            call=call,
            publish=self._services.publish,
            kind=kind,
            pool=pool,
            tracing=self._services.tracing,
            duration=Histogram() if self._services.measure else None,
        )
        if pool is not None:
            pool.stats = runner.stats
        trigger = spec.trigger
        lanes = spec.concurrency * (spec.batch.max if spec.batch is not None else 1)
        policy = msgspec.structs.replace(trigger.delivery, concurrency=lanes)
        # A correlation reads the trigger through the subscription's iterator form; the
        # others hand each event (or batch) to the runner.
        handler_sink: Handler | None = None
        filters: list[Filter] = []  # a correlation's, checked before anything starts
        if spec.correlate is not None:
            for i, match in enumerate(spec.correlate.match):
                compiled, _ = compile_pipeline(
                    match,
                    None,
                    where=f"{where}.correlate.match[{i}]",
                    limits=self._filter_limits,
                )
                assert compiled is not None
                filters.append(compiled)
        else:
            handler_sink = runner.sink
            if spec.batch is not None:
                handler_sink = Batcher(spec.batch.max, float(spec.batch.window), runner.invoke)
        subscription = self._host.subscribe(
            trigger.topic,
            spec.group,
            handler=handler_sink,
            filter=trigger.filter,
            transform=trigger.transform,
            delivery=policy,
            start=trigger.start,
            name=f"function.{spec.name}",
        )
        await subscription.start()
        if spec.correlate is not None:
            correlator = Correlator(
                spec.correlate,
                filters,
                name=spec.name,
                invoke=runner.invoke,
                policy=policy,
                dead_letter=self._dead_letter,
                topic=trigger.topic,
                group=spec.group,
                stats=runner.stats,
                delivery_stats=subscription.stats,
            )
            self._tg.start_soon(self._correlate, correlator, subscription, runner)
        self._runners[spec.name] = runner
        log.info("function %s (%s) listens on %s", spec.name, kind, trigger.topic)

    async def _dead_letter(self, topic: str, event: Event) -> None:
        await self._services.publish(topic, event)

    async def _correlate(
        self, correlator: Correlator, subscription: Subscription, runner: FunctionRunner
    ) -> None:
        async with anyio.create_task_group() as tg:
            try:
                await correlator.run(subscription, tg)  # a backend error is retried in it
            except Exception:
                log.exception(
                    "function %s stopped on an unexpected error; it leaves its group, so "
                    "the events it held go to the group's other members",
                    correlator.name,
                )
                runner.failed = True
                tg.cancel_scope.cancel()  # the sets in hand are not acked
                with anyio.CancelScope(shield=True):
                    await subscription.close()
            tg.cancel_scope.cancel()


def _handler_path(function: Function, where: str) -> str:
    """The ``module:function`` a worker process imports, checked as far as may be
    without importing it here."""
    if function.handler is not None:
        fn = function.handler
        module = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", "")
        if not module or "<" in qualname:
            raise ConfigError(
                f"{where}: isolation: process needs a function a worker can import; define "
                f"{qualname or fn!r} at module level"
            )
        return f"{module}:{qualname}"
    assert function.spec.handler is not None
    path = function.spec.handler
    module_name = path.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise ConfigError(
            f"{where}: cannot find module {module_name!r} for handler {path!r}; is it "
            "installed and on the Python path?",
        )
    return path
