"""The admin API (Apache EventMesh's port 10106): probes for Kubernetes and what is running.

======================  =====================================================================
``GET /healthz``        200 while the process serves requests (liveness)
``GET /readyz``         200 when every connector reaches its backend, 503 naming those that do
                        not, and 503 once shutdown has begun (readiness)
``GET /topics``         the topics the config names and those used since start, with their
                        connector (and, on the memory connector, the events ``retained``
                        and those ``released`` under a retention limit)
``GET /subscriptions``  every subscription, as the HTTP API lists them
``GET /connectors``     each connector: type, capabilities, open, healthy
``GET /functions``      each function: kind, trigger topic, state (``idle``, ``running``,
                        ``cold``, ``starting``, ``failed``), counters, worker process ids
``GET /metrics``        the mesh's metrics in the Prometheus text format (docs/operations.md),
                        rendered in a worker thread, one scrape at a time
======================  =====================================================================

With ``auth:`` configured, every route but ``/healthz`` and ``/readyz`` needs a
principal the ACL grants ``admin`` (401 with ``WWW-Authenticate: Bearer`` without
acceptable credentials, 403 without the grant, as problem bodies). Nothing shown here
carries a secret: subscriptions as the HTTP API shows them, and each connector's
config with its passwords, tokens and credentials as ``***`` (:mod:`eventmesh._redact`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from aiohttp import web

from eventmesh._redact import redact_config
from eventmesh.auth import Guard
from eventmesh.connectors.memory import MemoryConnector
from eventmesh.errors import PermissionDeniedError, UnauthenticatedError
from eventmesh.server._authn import caller, problem_response

if TYPE_CHECKING:
    from eventmesh.connectors.base import Connector
    from eventmesh.mesh import Mesh
    from eventmesh.server.subscriptions import Registry

__all__ = ["Metrics", "create_admin_app", "mesh_metrics"]

_encoder = msgspec.json.Encoder()

Metrics = Callable[[], str]
"""Renders the ``/metrics`` page in the Prometheus text format. It is called in a worker
thread (``anyio.to_thread.run_sync``), one call at a time, so a page that takes half a
second to format does not hold the event loop: what it reads of the loop's state it reads
through ``anyio.from_thread``, as ``MeshMetrics.render`` does."""


_OPEN = frozenset({"/healthz", "/readyz"})
"""The probes: answered without credentials, whatever ``auth:`` says."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


def _admin_only(guard: Guard) -> Any:
    """A middleware that lets through the probes and, otherwise, only principals the ACL
    grants ``admin``; other callers get a 401 or 403 problem body."""

    @web.middleware
    async def admin_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _OPEN:
            return await handler(request)
        try:
            guard.check(caller(request, guard), "admin")
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            return problem_response(exc)
        return await handler(request)

    return admin_only


def create_admin_app(
    mesh: Mesh,
    registry: Registry,
    *,
    metrics: Metrics,
    stopping: Callable[[], bool],
    probe_timeout: float = 2.0,
    guard: Guard | None = None,
) -> web.Application:
    """The admin application over a running mesh and its registry.

    ``metrics`` renders ``/metrics``; ``stopping`` says whether shutdown has begun (then
    ``/readyz`` answers 503 so a load balancer stops sending work).
    """

    async def probe(connector: Connector) -> bool:
        with anyio.move_on_after(probe_timeout):
            try:
                return await connector.health()
            except Exception:
                return False
        return False

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if stopping():
            return _json({"status": "stopping"}, status=503)
        down = [name for name, c in mesh.connectors.items() if not await probe(c)]
        if down:
            return _json({"status": "unavailable", "connectors_down": down}, status=503)
        return _json({"status": "ready"})

    async def topics(request: web.Request) -> web.Response:
        names = set(mesh.config.topics) | set(mesh.topics)
        held = {
            name: connector.topic_stats()
            for name, connector in mesh.connectors.items()
            if isinstance(connector, MemoryConnector)
        }
        listed: list[dict[str, Any]] = []
        for n in sorted(names):
            connector_name = mesh.config.connector_for(n)
            entry: dict[str, Any] = {"name": n, "connector": connector_name}
            stats = held.get(connector_name, {}).get(n)
            if stats is not None:  # a memory topic: what it retains, what limits released
                entry["retained"], entry["released"] = stats.retained, stats.released
            listed.append(entry)
        return _json({"topics": listed})

    async def subscriptions(request: web.Request) -> web.Response:
        return _json({"subscriptions": [registry.resource(r) for r in registry.list()]})

    async def connectors(request: web.Request) -> web.Response:
        listed = []
        for name, connector in mesh.connectors.items():
            spec = mesh.config.connectors.get(name)
            config = spec.config if spec is not None else None
            listed.append(
                {
                    "name": name,
                    "type": spec.type if spec is not None else type(connector).__name__,
                    "capabilities": msgspec.structs.asdict(connector.capabilities),
                    "open": connector.is_open,
                    "healthy": await probe(connector),
                    "config": redact_config(_builtins(config)),
                }
            )
        return _json({"connectors": listed})

    async def functions(request: web.Request) -> web.Response:
        return _json({"functions": [runner.describe() for runner in mesh.functions]})

    rendering = anyio.Lock()

    async def metrics_page(request: web.Request) -> web.Response:
        # In a thread: formatting 1,000 subscriptions' series takes about half a second,
        # which held the loop (every port, every delivery) for as long. One at a time, so
        # scrapes that come meanwhile are served the page the sidecar keeps for a second.
        async with rendering:
            body = await anyio.to_thread.run_sync(_encoded, metrics)
        return web.Response(
            body=body, content_type="text/plain", charset="utf-8", headers=_PROM_HEADERS
        )

    guard = guard or Guard()
    app = web.Application(middlewares=[_admin_only(guard)] if guard.enabled else [])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/topics", topics)
    app.router.add_get("/subscriptions", subscriptions)
    app.router.add_get("/connectors", connectors)
    app.router.add_get("/functions", functions)
    app.router.add_get("/metrics", metrics_page)
    return app


_PROM_HEADERS = {"X-Content-Type-Options": "nosniff"}


def _encoded(metrics: Metrics) -> bytes:
    """The page ``metrics`` renders, as UTF-8 (15 MB for 1,000 subscriptions: encoded in
    the thread too)."""
    return metrics().encode()


def _builtins(config: Any) -> Any:
    """A connector's config as JSON-ready builtins (None stays None)."""
    if config is None:
        return None
    try:
        return msgspec.to_builtins(config, enc_hook=str)
    except (TypeError, msgspec.EncodeError):
        return {"repr": "<not shown>"}


def mesh_metrics(mesh: Mesh) -> str:
    """The mesh's metrics in the Prometheus text format (docs/operations.md lists them);
    an empty page with ``metrics.enabled: false``. Call it on the event loop or in a
    worker thread of it (:data:`Metrics`)."""
    return mesh.metrics.render() if mesh.metrics is not None else ""
