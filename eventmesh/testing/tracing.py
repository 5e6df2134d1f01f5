"""Helpers to test that trace context crosses a mesh: spans kept in memory, a webhook
that answers every event with a reply, and a check that spans form one trace.

Used by eventmesh's own tests for each connector; a connector author runs the same
chain over a new connector with :func:`run_chain`: an event POSTed to a sidecar, stored,
delivered to a webhook whose reply is stored and answered by a function, whose answer
is stored and delivered to a subscriber, must be one trace::

    from eventmesh.server.sidecar import Sidecar

    provider, exporter = recording_provider()
    answers, hook = await run_chain({"default": {"type": "mine"}}, Sidecar, provider)
    assert_one_trace(exporter.get_finished_spans(), chain("orders"))

Importing this module needs the ``sidecar`` and ``otel`` extras (a MissingExtraError
names the one missing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

import anyio

from eventmesh._imports import needs_extra

with needs_extra("eventmesh.testing.tracing"):
    import aiohttp
    from aiohttp import web
    from multidict import CIMultiDictProxy
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventmesh.bindings.http import from_http, to_binary
from eventmesh.errors import LifecycleError
from eventmesh.event import Event

if TYPE_CHECKING:
    from eventmesh.mesh import Mesh

__all__ = [
    "CHAIN_FUNCTION",
    "ReplyingWebhook",
    "answer",
    "assert_one_trace",
    "chain",
    "recording_provider",
    "run_chain",
]

CHAIN_FUNCTION: Final = "eventmesh.testing.tracing:answer"
"""The handler of the chain's function (:func:`answer`)."""


def recording_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A tracer provider that samples everything and keeps each finished span in the
    exporter it returns with it (``exporter.get_finished_spans()``)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


class ReplyingWebhook:
    """An HTTP receiver on 127.0.0.1 that answers each CloudEvent POSTed to it with a
    binary-mode CloudEvent reply of type ``<type>.reply``; an async context manager.

    :attr:`received` holds each event and the request's headers, in order.
    """

    def __init__(self) -> None:
        self.received: list[tuple[Event, CIMultiDictProxy[str]]] = []
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Where to POST events (known once entered)."""
        if self._url is None:
            raise LifecycleError("enter the webhook first: 'async with ReplyingWebhook()'")
        return self._url

    async def _receive(self, request: web.Request) -> web.Response:
        events = from_http(request.headers, await request.read())
        for event in events:
            self.received.append((event, request.headers))
        first = events[0]
        reply = Event(
            type=f"{first.type}.reply", source="/replying-webhook", data={"for": first.id}
        )
        headers, body = to_binary(reply)
        return web.Response(status=200, headers=headers, body=body)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/events", self._receive)
        self._runner = runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self._url = f"http://127.0.0.1:{port}/events"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def assert_one_trace(
    spans: Sequence[ReadableSpan], parents: Mapping[str, str | None]
) -> dict[str, ReadableSpan]:
    """Check that the spans named in ``parents`` exist once each, share one trace id,
    and that each has the named parent (None: none of ``spans`` is its parent: it is
    the root, or its parent is remote); return them by name.

    Raises AssertionError describing every span when they do not.
    """
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    found: dict[str, ReadableSpan] = {}
    for name in parents:
        matches = by_name.get(name, [])
        if len(matches) != 1:
            raise AssertionError(
                f"expected one span {name!r}, found {len(matches)}; spans: {_describe(spans)}"
            )
        found[name] = matches[0]
    traces = {s.context.trace_id for s in found.values() if s.context is not None}
    if len(traces) != 1:
        raise AssertionError(f"the spans are in {len(traces)} traces: {_describe(spans)}")
    for name, parent_name in parents.items():
        span = found[name]
        if parent_name is None:
            known = {s.context.span_id for s in spans if s.context is not None}
            if span.parent is not None and span.parent.span_id in known:
                raise AssertionError(f"{name!r} has a parent here; spans: {_describe(spans)}")
            continue
        parent = found[parent_name].context
        if span.parent is None or parent is None or span.parent.span_id != parent.span_id:
            raise AssertionError(
                f"the parent of {name!r} is not {parent_name!r}; spans: {_describe(spans)}"
            )
    return found


def _describe(spans: Sequence[ReadableSpan]) -> str:
    ids = {s.context.span_id: s.name for s in spans if s.context is not None}
    return "; ".join(
        f"{s.name} (parent: {ids.get(s.parent.span_id, '?') if s.parent else None})" for s in spans
    )


# -- the chain ------------------------------------------------------------------------------


async def answer(event: Event) -> Event:
    """The chain's function: answers each webhook reply with an event of its own."""
    return Event(type="order.answered", source="/answer", data={"to": event.id})


def chain(orders: str) -> dict[str, str | None]:
    """The spans of the chain :func:`run_chain` runs on topic ``orders``, each with the
    name of its parent (for :func:`assert_one_trace`). Replies go to ``<orders>-replies``
    and the function's answers to ``<orders>-answers``."""
    replies, answers = f"{orders}-replies", f"{orders}-answers"
    return {
        f"publish {orders}": None,
        f"store {orders}": f"publish {orders}",
        "deliver hook": f"publish {orders}",
        f"publish {replies}": "deliver hook",
        f"store {replies}": f"publish {replies}",
        "deliver function.answer": f"publish {replies}",
        "function answer": "deliver function.answer",
        f"publish {answers}": "function answer",
        f"store {answers}": f"publish {answers}",
        "deliver collector": f"publish {answers}",
    }


class Served(Protocol):
    """What :func:`run_chain` needs of a running sidecar."""

    @property
    def http_url(self) -> str: ...

    @property
    def mesh(self) -> Mesh: ...


async def run_chain(
    connectors: Mapping[str, Any],
    serve: Callable[..., AbstractAsyncContextManager[Served]],
    provider: TracerProvider,
    *,
    orders: str = "orders",
    event: Event | None = None,
    timeout: float = 60.0,
) -> tuple[list[Event], ReplyingWebhook]:
    """POST ``event`` (by default a new one) to ``orders`` on a sidecar over
    ``connectors`` that traces with ``provider``: a subscription delivers it to a
    :class:`ReplyingWebhook` whose reply goes to ``<orders>-replies``; a function
    (:func:`answer`) answers that to ``<orders>-answers``; a subscriber collects the
    answers. Returns once an answer arrived and the webhook's subscription has no lag
    left: the answers and the webhook (its requests and their headers).

    ``serve`` is the sidecar class (``eventmesh.server.sidecar.Sidecar``), called as
    ``serve(config, tracer_provider=provider)``.
    """
    replies, answers = f"{orders}-replies", f"{orders}-answers"
    got: list[Event] = []
    arrived = anyio.Event()

    async def collect(answer: Event) -> None:
        got.append(answer)
        arrived.set()

    free = {"port": 0}
    async with ReplyingWebhook() as hook:
        config: dict[str, Any] = {
            "connectors": dict(connectors),
            "server": {"http": free, "grpc": free, "admin": free},
            "subscriptions": [
                {
                    "name": "hook",
                    "topic": orders,
                    "start": "earliest",
                    "sink": {"webhook": hook.url},
                    "reply_to": replies,
                }
            ],
            "functions": [
                {
                    "name": "answer",
                    "trigger": {"topic": replies, "start": "earliest"},
                    "handler": CHAIN_FUNCTION,
                    "reply_to": answers,
                }
            ],
        }
        async with serve(config, tracer_provider=provider) as sidecar:
            mesh = sidecar.mesh
            await mesh.subscribe(
                answers, "collector", handler=collect, start="earliest", name="collector"
            )
            headers, body = to_binary(event or Event(type="order", source="/t"))
            url = f"{sidecar.http_url}/topics/{orders}/events"
            async with (
                aiohttp.ClientSession() as session,
                session.post(url, headers=headers, data=body) as response,
            ):
                if response.status != 202:
                    raise AssertionError(f"the sidecar answered {response.status}")
            with anyio.fail_after(timeout):
                await arrived.wait()
                # The connector tells the lag: nothing is left once the event is acked.
                hook_sub = next(s for s in mesh.subscriptions if s.name == "hook")
                while hook_sub.lag != 0:  # noqa: ASYNC110  # a figure read from the broker
                    await anyio.sleep(0.02)
    return got, hook
