"""Declaring a function: the one struct both the config file and the code produce.

A function is a consumer of the mesh whose handler is user code (a Python callable, in
this process, a thread or a worker process) or an HTTP endpoint. Its trigger is a topic,
a filter and transforms in the pipeline's dialects, and a delivery policy::

    functions:
      - name: enrich
        trigger: {topic: orders, filter: {prefix: {type: com.example.order.}}}
        handler: "myapp.handlers:enrich"     # or url: http://127.0.0.1:8080/enrich
        reply_to: orders.enriched

In code, ``@mesh.function(topic="orders", reply_to="orders.enriched")`` (or
:meth:`Function.declare`) builds the same :class:`FunctionConfig` from keyword
arguments, checked the same way, with the callable beside it.

What a handler returns decides what happens to the event (see docs/functions.md):
``None`` acks; an :class:`~eventmesh.Event` or a list of them is published to
``reply_to``, then the event is acked; raising retries under the delivery policy, then
dead-letters; raising :class:`Drop` acks at once, without a retry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from eventmesh._duration import Duration
from eventmesh._redact import redact_url, redacted_repr
from eventmesh.delivery.policy import DeliveryPolicy
from eventmesh.errors import ConfigError
from eventmesh.pipeline.limits import DEFAULT_LIMITS, FilterLimits

__all__ = [
    "CAUSATION_EXTENSION",
    "BatchConfig",
    "CorrelateConfig",
    "Drop",
    "Function",
    "FunctionConfig",
    "TriggerConfig",
    "check_function",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")

CAUSATION_EXTENSION = "causationid"
"""The extension on a reply holding the id of the event that caused it."""


class Drop(Exception):  # a signal, not an error: "raise Drop"
    """Raised by a function to ack its event without retrying it or replying.

    For an event the function decides not to handle (a duplicate, a test order): the
    event is acked and counted as dropped, nothing is dead-lettered. Any other exception
    is retried under the delivery policy. It works the same from a thread or a worker
    process.
    """


class TriggerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What makes a function run: a topic, a filter, transforms and a delivery policy."""

    topic: str
    group: str | None = None
    """The consumer group the function reads as; defaults to the function's name."""
    filter: Any = None
    """A filter in the pipeline's dialects (docs/filters.md)."""
    transform: list[Any] | None = None
    """Transform steps applied before the function sees the event (docs/filters.md)."""
    delivery: DeliveryPolicy = DeliveryPolicy()
    """Retries, backoff, dead letter and TTL. Its ``concurrency`` is set from the
    function's own ``concurrency`` (and ``batch.max``)."""
    start: Literal["earliest", "latest"] = "latest"


class BatchConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Give the function a list: up to ``max`` events, or what arrived in ``window``."""

    max: int = 10
    window: Duration = Duration(0.2)


class CorrelateConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fire once events matching every filter of ``match`` arrived with the same key.

    ``by`` names the attribute (context attribute or extension) that groups events;
    the set must complete within ``window`` of its first event, else its events go to
    the dead-letter topic with reason ``uncorrelated``.
    """

    match: list[Any]
    """Two or more filters (pipeline dialects); the function gets one event per filter,
    in this order."""
    by: str = "subject"
    window: Duration = Duration(30.0)
    max_pending: int = 10_000
    """Events held unacked (in open sets and sets being fired) at most; at the limit
    reading waits until a set fires or expires (back-pressure)."""


class FunctionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A function declared in the configuration (or built by ``@mesh.function``)."""

    name: str
    trigger: TriggerConfig
    handler: str | None = None
    """A Python callable, ``"package.module:function"`` (async or not)."""
    url: str | None = None
    """An HTTP function: each event is POSTed here in binary mode."""
    reply_to: str | None = None
    """The topic for the events the function returns (or an HTTP function answers)."""
    isolation: Literal["auto", "process"] = "auto"
    """``auto``: async functions run on the event loop, plain ones in the thread pool;
    ``process``: in a pool of worker processes that scales to zero."""
    workers: int = 1
    """With ``isolation: process``, the worker processes of the pool."""
    idle_timeout: Duration = Duration(60.0)
    """With ``isolation: process``, the pool stops after this long without invocations."""
    concurrency: int = 16
    """Invocations of this function running at the same time, at most."""
    timeout: Duration | None = None
    """One invocation's limit; then it is cancelled and counts as a failure (retried).
    HTTP functions default to 10s."""
    rate_limit: float | None = None
    """Events per second the function is given, at most (a token bucket)."""
    burst: int = 1
    """With ``rate_limit``, events that may start at once after a quiet spell."""
    batch: BatchConfig | None = None
    correlate: CorrelateConfig | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """HTTP functions: extra request headers."""

    def __repr__(self) -> str:
        """The settings with the URL's credentials and the header values shown as
        ``***``, as a webhook sink's are (a config may be printed or logged whole)."""
        return redacted_repr(self)

    @property
    def group(self) -> str:
        """The consumer group the function reads as."""
        return self.trigger.group or self.name


@dataclass(frozen=True, slots=True)
class Function:
    """A declared function: its :class:`FunctionConfig` and, when declared in code,
    the callable (then ``spec.handler`` and ``spec.url`` are None)."""

    spec: FunctionConfig
    handler: Callable[..., Any] | None = None

    @property
    def name(self) -> str:
        """The function's name (unique in a mesh)."""
        return self.spec.name

    @classmethod
    def declare(
        cls, handler: Callable[..., Any], *, topic: str, name: str | None = None, **options: Any
    ) -> Function:
        """A function running ``handler`` on events of ``topic``.

        ``options`` are the keys of a configured function (``reply_to``, ``concurrency``,
        ``timeout``, ``batch``, ...) and of its trigger (``filter``, ``transform``,
        ``delivery``, ``group``, ``start``); ``filter`` may also be a Python callable, as
        for ``Mesh.subscribe``. Raises ConfigError naming a wrong key.
        """
        if not callable(handler):
            raise ConfigError(f"a function's handler must be callable, got {handler!r}")
        name = name or getattr(handler, "__name__", None) or "function"
        trigger: dict[str, Any] = {"topic": topic}
        for key in ("group", "filter", "transform", "delivery", "start"):
            if key in options:
                trigger[key] = options.pop(key)
        if isinstance(trigger.get("delivery"), DeliveryPolicy):
            trigger["delivery"] = msgspec.to_builtins(trigger["delivery"], enc_hook=float)
        data = {"name": name, "trigger": trigger, **options}
        where = f"function {name!r}"
        try:
            spec = msgspec.convert(data, FunctionConfig, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        problem = check_function(spec, declared_in_code=True)
        if problem is not None:
            message, path = problem
            raise ConfigError(f"{where}: {message}", key=".".join(map(str, path)) or None)
        return cls(spec, handler)


def _dec_hook(kind: type, obj: Any) -> Any:
    from eventmesh._duration import parse_duration

    if kind is Duration:
        return parse_duration(obj)
    raise NotImplementedError(f"cannot decode {kind!r}")


def check_function(
    spec: FunctionConfig, *, declared_in_code: bool = False, limits: FilterLimits = DEFAULT_LIMITS
) -> tuple[str, list[str | int]] | None:
    """The first problem of a declaration that spans keys, with the path of its key
    (relative to the function), or None. Pipelines are compiled to check them."""
    if not _NAME.match(spec.name):
        return "function names use letters, digits, '.', '_' and '-'", ["name"]
    if not spec.trigger.topic:
        return "the trigger needs a topic", ["trigger", "topic"]
    for key in ("concurrency", "workers", "burst"):
        if getattr(spec, key) < 1:
            return f"{key} must be at least 1", [key]
    for key in ("timeout", "idle_timeout", "rate_limit"):
        value = getattr(spec, key)
        if value is not None and value <= 0:
            return f"{key} must be more than 0", [key]
    if spec.batch is not None and spec.batch.max < 1:
        return "max must be at least 1", ["batch", "max"]
    if spec.correlate is not None:
        correlate = spec.correlate
        if len(correlate.match) < 2:
            return "match needs at least two filters", ["correlate", "match"]
        if correlate.window <= 0:
            return "window must be more than 0s", ["correlate", "window"]
        if correlate.max_pending < 1:
            return "max_pending must be at least 1", ["correlate", "max_pending"]
        if not correlate.by:
            return "by names the attribute that groups events, e.g. subject", ["correlate", "by"]
    if not declared_in_code:
        kinds = [k for k in ("handler", "url") if getattr(spec, k) is not None]
        if len(kinds) != 1:
            return "a function names exactly one of 'handler: module:function' or 'url'", []
    if spec.url is not None:
        if not spec.url.startswith(("http://", "https://")):
            return f"url {redact_url(spec.url)!r} must be an http:// or https:// URL", ["url"]
        if spec.isolation == "process":
            return "an HTTP function runs at its URL; isolation: process is for handlers", [
                "isolation"
            ]
        if spec.batch is not None:
            return "batch is for Python functions; an HTTP function gets one event", ["batch"]
    if spec.handler is not None and ":" not in spec.handler:
        return f"handler {spec.handler!r} must look like 'package.module:function'", ["handler"]
    if spec.batch is not None and spec.correlate is not None:
        return "a function takes either a batch or a correlated set, not both", ["batch"]
    try:  # refused at load, with the file's line, not when the mesh starts it
        spec.trigger.delivery.dead_letter_topic(spec.trigger.topic, spec.group)
    except ConfigError as exc:
        return str(exc).removeprefix(f"{exc.key}: "), ["trigger", "delivery", "dead_letter"]
    from eventmesh.pipeline.compile import compile_pipeline

    try:
        compile_pipeline(
            spec.trigger.filter, spec.trigger.transform, where="trigger", limits=limits
        )
        if spec.correlate is not None:
            for i, spec_filter in enumerate(spec.correlate.match):
                compile_pipeline(spec_filter, None, where=f"correlate.match[{i}]", limits=limits)
    except ConfigError as exc:
        key = exc.key or "trigger"
        message = str(exc).removeprefix(f"{exc.key}: ") if exc.key else str(exc)
        path: list[str | int] = []
        for part, index in re.findall(r"\.?([^.\[]+)|\[(\d+)\]", key):
            path.append(int(index) if index else part)
        return message, path
    return None
