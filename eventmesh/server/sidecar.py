"""The sidecar: one Mesh with its HTTP, gRPC and admin servers, started and stopped together.

``eventmesh run`` is ``async with Sidecar(config)`` until SIGTERM. Shutdown goes in this
order, all within ``server.shutdown_timeout``:

1. ``/readyz`` turns 503 and the HTTP and gRPC listeners close: nothing new comes in;
2. requests in progress finish (a publish is answered once its events are stored), and
   gRPC streams get the grace period;
3. pull and push subscriptions stop: deliveries in hand finish, what was not acked goes
   back to the group;
4. the mesh closes: configured subscriptions finish theirs, acked positions are
   committed, connectors close;
5. the admin server stops last, so probes answer until the end.

Each listener bounds what a client may hold of it (``server.<name>.max_connections``,
``header_timeout``; :mod:`eventmesh.server._listener` for HTTP and admin, gRPC's own
options for gRPC), the open-file limit is checked against those caps at start, and
``/metrics`` is rendered at most once a second (:class:`_ScrapeCache`).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

import anyio
import anyio.abc
import grpc
import msgspec
from aiohttp import web

from eventmesh._lifecycle import ClosedOnExit
from eventmesh._status import PROBLEM_CONTENT_TYPE
from eventmesh.auth import Guard
from eventmesh.config import GrpcListener, Listener, MeshConfig, ServerConfig, load_config
from eventmesh.connectors.base import Connector
from eventmesh.errors import ConfigError, LifecycleError
from eventmesh.mesh import Mesh
from eventmesh.server import _reflection as reflection
from eventmesh.server._jwks import JwksSource
from eventmesh.server._listener import GuardedSite, refusal
from eventmesh.server.admin import Metrics, create_admin_app, mesh_metrics
from eventmesh.server.apache_grpc import add_apache_services
from eventmesh.server.apache_http import ApacheHttp
from eventmesh.server.apache_wire import ApacheConsumers
from eventmesh.server.grpc import add_to_server, grpc_options
from eventmesh.server.http import create_app
from eventmesh.server.subscriptions import Registry
from eventmesh.tls import CertReloader, TlsConfig, server_context

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import TracerProvider

__all__ = ["Sidecar"]

log = logging.getLogger(__name__)

_ADMIN_KEEPALIVE: Final = 75.0
"""Seconds the admin port keeps an idle connection open."""
_SCRAPE_MAX_AGE: Final = 1.0
"""Seconds one rendering of ``/metrics`` is served again (see :class:`_ScrapeCache`)."""
_RESERVED_FILES: Final = 256
"""File descriptors kept for what is not a client connection: connectors, logs, DNS."""
_TLS_CHECK_EVERY: Final = 10.0
"""Seconds between looks at the listeners' certificate files (a renewed one is loaded)."""


class _ScrapeCache:
    """The ``/metrics`` page rendered at most once per ``max_age`` seconds, or per ten
    times as long as the last render took when that is longer: a flood of scrapes costs
    one render per second, and rendering never takes more than a tenth of the loop."""

    __slots__ = ("_expires", "_render", "_text", "max_age")

    def __init__(self, render: Metrics, max_age: float = _SCRAPE_MAX_AGE) -> None:
        self._render = render
        self.max_age = max_age
        self._text = ""
        self._expires = -1.0

    def __call__(self) -> str:
        now = time.monotonic()
        if now >= self._expires:
            self._text = self._render()
            took = time.monotonic() - now
            self._expires = now + max(self.max_age, 10 * took)
        return self._text


def _busy(name: str) -> bytes:
    """The problem body of the 503 that a connection above the cap gets."""
    return msgspec.json.encode(
        {
            "type": "EventMeshError",
            "title": "Service Unavailable",
            "status": 503,
            "detail": f"the {name} port holds as many connections as it may "
            f"(server.{name}.max_connections); retry shortly",
        }
    )


def _check_file_limit(server: ServerConfig) -> None:
    """Make room for every connection the listeners may hold: raise the soft
    ``RLIMIT_NOFILE`` towards the hard one when the caps need it, and warn when even the
    hard limit is too low (then a flood on the public ports could starve the admin port
    and the connectors of file descriptors)."""
    needed = (
        server.http.max_connections
        + server.grpc.max_connections
        + server.admin.max_connections
        + server.webhook.max_connections
        + _RESERVED_FILES
    )
    try:
        import resource
    except ImportError:  # not on this platform: nothing to check
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.debug("cannot raise RLIMIT_NOFILE to %d: %s", target, exc)
        else:
            log.info("raised the open-file limit from %d to %d for the listeners", soft, target)
            soft = target
    if soft < needed:
        log.warning(
            "the open-file limit is %d, below the %d that the listeners' max_connections "
            "(server.http, server.grpc, server.admin), the webhook connections and %d "
            "spare need; lower those caps or raise the limit (ulimit -n)",
            soft,
            needed,
            _RESERVED_FILES,
        )


class Sidecar(ClosedOnExit):
    """A mesh served over HTTP, gRPC and the admin port; an async context manager.

    ``config``, ``connectors``, ``tracer_provider`` and ``span_processor`` are what
    :class:`~eventmesh.Mesh` takes. A listener port of 0 picks a free
    port; the bound addresses are :attr:`http_url`, :attr:`grpc_target` and
    :attr:`admin_url` once entered.
    """

    def __init__(
        self,
        config: MeshConfig | Mapping[str, Any] | str | Path | None = None,
        *,
        connectors: Mapping[str, Connector] | None = None,
        metrics: Metrics | None = None,
        tracer_provider: TracerProvider | None = None,
        span_processor: SpanProcessor | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = load_config(config)
        self.reuse_port = reuse_port
        """Bind every listener with SO_REUSEPORT, so the workers of ``eventmesh run
        --workers`` share its ports (eventmesh._workers)."""
        self.mesh = Mesh(
            self.config,
            connectors=connectors,
            tracer_provider=tracer_provider,
            span_processor=span_processor,
        )
        self.guard = Guard(self.config.auth, self.config.acl)
        """Who may call, and what each caller may do (``auth:`` and ``acl:``)."""
        jwt = self.config.auth.jwt
        self._jwks = JwksSource(self.guard.authenticator, jwt) if jwt is not None else None
        self.registry = Registry(self.mesh, guard=self.guard)
        self.apache = ApacheConsumers(self.mesh, self.guard)
        """Apache EventMesh clients' subscriptions (webhooks, and streams open now)."""
        self._reloaders: list[CertReloader] = []
        self._tasks: anyio.abc.TaskGroup | None = None
        """Refreshes the JWKS and reloads certificates; never end by themselves."""
        self._metrics = _ScrapeCache(metrics or (lambda: mesh_metrics(self.mesh)))
        self._stack: AsyncExitStack | None = None
        self._http: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._admin: web.AppRunner | None = None
        self._ports: dict[str, int] = {}
        self._state = "new"

    # -- addresses -------------------------------------------------------------------------

    def _address(self, name: str, listener: Listener) -> str:
        if name not in self._ports:
            raise LifecycleError("the sidecar is not running; enter it first")
        host = listener.host
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self._ports[name]}"

    @property
    def http_url(self) -> str:
        """The HTTP API's base URL, e.g. ``http://127.0.0.1:10105`` (``https://`` with TLS)."""
        return _scheme(self.config.server.http) + self._address("http", self.config.server.http)

    @property
    def grpc_target(self) -> str:
        """The gRPC API's ``host:port``."""
        return self._address("grpc", self.config.server.grpc)

    @property
    def admin_url(self) -> str:
        """The admin API's base URL."""
        return _scheme(self.config.server.admin) + self._address("admin", self.config.server.admin)

    @property
    def stopping(self) -> bool:
        """True from the start of shutdown."""
        return self._state != "open"

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LifecycleError("a Sidecar can be entered once; create a new one")
        self._state = "opening"
        server = self.config.server
        exposed = server.exposed(auth=self.guard.enabled)
        if exposed and not server.insecure:
            raise ConfigError(
                f"refusing to serve {', '.join(exposed)} beyond this host without auth and "
                "TLS: configure auth: and server.<name>.tls, listen on 127.0.0.1, or set "
                "server.insecure: true to accept the risk",
                key=f"server.{exposed[0]}.host",
            )
        if exposed:
            log.warning(
                "server.insecure: %s listen beyond this host without auth and TLS; anyone "
                "who reaches them may publish, subscribe and manage",
                ", ".join(exposed),
            )
        _check_file_limit(server)
        if self._jwks is not None:
            await self._jwks.load()
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.mesh)
            await stack.enter_async_context(self.registry)
            self._admin = await self._serve_http(
                "admin",
                create_admin_app(
                    self.mesh,
                    self.registry,
                    metrics=self._metrics,
                    stopping=lambda: self.stopping,
                    guard=self.guard,
                ),
                server.admin,
            )
            self._http = await self._serve_http(
                "http",
                create_app(
                    self.mesh,
                    self.registry,
                    server.http,
                    guard=self.guard,
                    apache=ApacheHttp(self.mesh, self.apache, self.guard, server.http),
                ),
                server.http,
            )
            self._grpc = await self._serve_grpc(server.grpc)
            self._stack = stack.pop_all()
        if self._jwks is not None or self._reloaders:
            # Entered last and left first (close()): the innermost cancel scope.
            tasks = anyio.create_task_group()
            await tasks.__aenter__()
            self._tasks = tasks
            if self._jwks is not None:
                tasks.start_soon(self._jwks.run)
            if self._reloaders:
                tasks.start_soon(self._watch_certificates)
        self._state = "open"
        log.info(
            "sidecar listening: http %s, grpc %s, admin %s",
            self.http_url,
            self.grpc_target,
            self.admin_url,
        )
        return self

    async def _serve_http(
        self, name: str, app: web.Application, listener: Listener
    ) -> web.AppRunner:
        keepalive = getattr(listener, "keepalive_timeout", _ADMIN_KEEPALIVE)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=5.0, keepalive_timeout=float(keepalive)
        )
        await runner.setup()
        context = self._tls_context(name, listener.tls)
        site = GuardedSite(
            runner,
            listener.host,
            listener.port,
            name=name,
            max_connections=listener.max_connections,
            header_timeout=float(listener.header_timeout),
            refusal=refusal(_busy(name), PROBLEM_CONTENT_TYPE),
            ssl_context=context,
            reuse_port=self.reuse_port,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"cannot listen on {listener.host}:{listener.port} for the {name} API: "
                f"{exc.strerror or exc}; choose another port (server.{name}.port)",
                key=f"server.{name}.port",
            ) from exc
        self._ports[name] = site.port
        return runner

    async def _serve_grpc(self, listener: GrpcListener) -> grpc.aio.Server:
        options: list[tuple[str, int]] = grpc_options(listener)
        if self.reuse_port:
            options.append(("grpc.so_reuseport", 1))
        server = grpc.aio.server(
            options=options, maximum_concurrent_rpcs=listener.max_concurrent_rpcs
        )
        services = reflection.recording(server)  # every service added below is reflected
        add_to_server(
            server,
            self.mesh,
            max_event_size=listener.max_event_size,
            guard=self.guard,
            open_timeout=float(listener.header_timeout),
        )
        add_apache_services(
            server, self.mesh, self.apache, guard=self.guard, max_event_size=listener.max_event_size
        )
        reflection.enable(server, services)
        host = f"[{listener.host}]" if ":" in listener.host else listener.host
        try:
            if listener.tls is not None:
                port = server.add_secure_port(
                    f"{host}:{listener.port}", _grpc_credentials(listener.tls)
                )
            else:
                port = server.add_insecure_port(f"{host}:{listener.port}")
        except RuntimeError as exc:
            port = 0
            error: Exception | None = exc
        else:
            error = None
        if not port:
            raise ConfigError(
                f"cannot listen on {listener.host}:{listener.port} for the gRPC API; "
                "choose another port (server.grpc.port)",
                key="server.grpc.port",
            ) from error
        await server.start()
        self._ports["grpc"] = port
        return server

    def _tls_context(self, name: str, tls: TlsConfig | None) -> ssl.SSLContext | None:
        if tls is None:
            return None
        context = server_context(tls, key=f"server.{name}.tls")
        self._reloaders.append(CertReloader(tls, context))
        return context

    async def _watch_certificates(self) -> None:
        """Load renewed certificate files into the HTTP and admin listeners (gRPC's
        credentials look at their files on each new connection)."""
        while True:
            await anyio.sleep(_TLS_CHECK_EVERY)
            for reloader in self._reloaders:
                await anyio.to_thread.run_sync(reloader.check)

    async def close(self, timeout: float | None = None) -> None:
        """Stop taking work, finish what is in hand within ``timeout`` seconds (the
        config's ``server.shutdown_timeout`` by default), then stop. Idempotent."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closing"
        budget = float(self.config.server.shutdown_timeout) if timeout is None else timeout
        deadline = time.monotonic() + budget

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        stack, self._stack = self._stack, None
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            tasks.cancel_scope.cancel()
            await tasks.__aexit__(None, None, None)
        try:
            if self._http is not None:
                for site in list(self._http.sites):
                    await site.stop()  # no new connections; requests in progress go on
            if self._grpc is not None:
                await self._grpc.stop(grace=min(left(), 5.0))
            await self.registry.close(timeout=left())
            await self.apache.close()
            if self._http is not None:
                await self._http.cleanup()
            await self.mesh.close(timeout=left())
            if self._admin is not None:
                await self._admin.cleanup()
        finally:
            self._state = "closed"
            if stack is not None:
                await stack.aclose()


def _scheme(listener: Listener) -> str:
    return "https://" if listener.tls is not None else "http://"


def _grpc_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Server credentials that read the certificate files again when they change: gRPC
    asks the fetcher before each new connection's handshake."""

    def configuration() -> grpc.ServerCertificateConfiguration:
        with open(tls.cert_file, "rb") as cert, open(tls.key_file, "rb") as key:
            pair = [(key.read(), cert.read())]
        root = None
        if tls.client_ca_file is not None:
            with open(tls.client_ca_file, "rb") as ca:
                root = ca.read()
        return grpc.ssl_server_certificate_configuration(pair, root_certificates=root)

    try:
        server_context(tls, key="server.grpc.tls")  # the same checks and errors as HTTP's
        current = [configuration()]
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file: {exc}", key="server.grpc.tls") from exc

    def reload() -> None:
        server_context(tls, key="server.grpc.tls")
        current[0] = configuration()

    reloader = CertReloader(tls, load=reload)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        return current[0] if reloader.check() else None

    # grpc-stubs type the fetcher as never returning None; gRPC documents None as
    # "no change" (grpc.dynamic_ssl_server_credentials).
    return grpc.dynamic_ssl_server_credentials(
        current[0],
        fetch,  # type: ignore[arg-type]
        require_client_authentication=tls.mutual,
    )
