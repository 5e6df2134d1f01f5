"""Typed, frozen configuration: YAML (or a dict) in, checked structs out.

Every key is checked when the configuration loads; a wrong one raises
:class:`~eventmesh.errors.ConfigError` naming the key (``subscriptions[0].delivery.
max_attempts``) and, for files, its line.

Precedence, highest first: command-line flags (the CLI's ``--set``), environment
variables, the file, the defaults here. Environment variables are read only where the
caller passes them (the CLI passes ``os.environ``; library code never reads it):

``EVENTMESH__<KEY>__<KEY>...``
    Sets the key at that path, double underscores separating the levels and numbers
    indexing lists, e.g. ``EVENTMESH__CONNECTORS__KAFKA__BOOTSTRAP_SERVERS=10.0.0.5:9092``
    or ``EVENTMESH__SUBSCRIPTIONS__0__DELIVERY__CONCURRENCY=4``. The value is read as a
    YAML scalar (``8`` is a number, ``true`` a boolean, ``"8"`` a string). Key names
    are lower-cased.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import msgspec
import yaml

from eventmesh._dedupe import DedupeConfig
from eventmesh._duration import Duration, parse_duration
from eventmesh._redact import redact_url, redacted_repr
from eventmesh.auth import AclRule, AuthConfig, read_secret, resolve_tokens
from eventmesh.connectors.memory import MemoryConfig
from eventmesh.delivery._sinkcheck import sink_problem
from eventmesh.delivery.policy import DeliveryPolicy, check_range
from eventmesh.errors import ConfigError, EventMeshError
from eventmesh.functions.function import FunctionConfig, check_function
from eventmesh.pipeline.limits import FilterLimits
from eventmesh.tls import TlsConfig

__all__ = [
    "ENV_PREFIX",
    "AdminListener",
    "ConnectorSpec",
    "DedupeConfig",
    "Duration",
    "FunctionConfig",
    "GrpcListener",
    "HttpListener",
    "LimitsConfig",
    "Listener",
    "LoggingConfig",
    "MeshConfig",
    "MetricsConfig",
    "ServerConfig",
    "SinkConfig",
    "SubscriptionConfig",
    "TopicConfig",
    "TracingConfig",
    "WebhookConfig",
    "convert",
    "load_config",
    "with_data_dir",
]

ENV_PREFIX = "EVENTMESH__"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_T = TypeVar("_T")


class ConnectorSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One named connector: its plugin ``type`` and the plugin's own typed config."""

    type: str = "memory"
    config: Any = None
    """An instance of the plugin's ``Config`` struct (None: its defaults)."""


class TopicConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of one topic."""

    connector: str | None = None
    """The name of the connector (under ``connectors:``) that stores this topic; by
    default the mesh's ``default_connector``."""
    dedupe: DedupeConfig | None = None
    """Store each (``source``, ``id``) once within a window: ``{window: 10m,
    max_entries: 100000}`` (docs/delivery.md, De-duplication). None: no de-duplication."""


class SinkConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a configured subscription sends its events: exactly one kind.

    The settings after ``webhook`` apply to webhook sinks only.
    """

    handler: str | None = None
    """A Python callable, ``"package.module:function"``, taking an Event (async or not)."""
    webhook: str | None = None
    """An ``http://`` or ``https://`` URL each event is POSTed to (see docs/sidecar.md)."""
    mode: Literal["binary", "structured", "batch"] = "binary"
    """The HTTP content mode of a webhook delivery; ``batch`` POSTs up to ``max_batch``
    events at once as ``application/cloudevents-batch+json``."""
    header_encoding: Literal["spec", "raw"] = "spec"
    """With ``mode: binary``, how ``ce-`` header values are written: ``spec``
    percent-encodes them as the HTTP binding says; ``raw`` sends UTF-8 text as it is
    where a header may hold it, for receivers that never decode (docs/sidecar.md)."""
    timeout: Duration = Duration(10.0)
    """How long one attempt may take before it counts as failed and is retried (above 0,
    at most 1 day)."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra request headers, e.g. an ``Authorization`` the receiver expects (then not
    also credentials in the URL)."""
    max_batch: int = 100
    """With ``mode: batch``, the most events in one request (1 to 10,000)."""
    batch_window: Duration = Duration(0.01)
    """With ``mode: batch``, how long to wait for more events before sending a batch
    (0 to 60 s)."""
    signing_secret: str | None = None
    """Sign every delivery as Standard Webhooks does (``webhook-id``,
    ``webhook-timestamp``, ``webhook-signature``) with this secret: ``whsec_`` and base64
    of at least 24 random bytes (docs/security.md). Never shown by the API or logs."""

    def __repr__(self) -> str:
        """The settings with the URL's credentials, header values and the signing secret
        shown as ``***`` (a config may be printed or logged whole)."""
        return redacted_repr(self)

    def problem(self) -> tuple[str, str] | None:
        """The key and message of what is wrong with these settings (a range, a header
        with a control character, credentials in both the URL and a header, a signing
        secret that is not one), or None. The config loader and the sidecar's API both
        ask (docs/delivery.md)."""
        return sink_problem(
            self.webhook,
            timeout=self.timeout,
            max_batch=self.max_batch,
            batch_window=self.batch_window,
            headers=self.headers,
            signing_secret=self.signing_secret,
        )


class SubscriptionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A subscription declared in the configuration."""

    name: str
    topic: str
    group: str | None = None
    """The consumer group; defaults to ``name``."""
    sink: SinkConfig | None = None
    filter: Any = None
    """A filter in the pipeline's dialects (see docs/filters.md)."""
    transform: list[Any] | None = None
    """A chain of transform steps (see docs/filters.md)."""
    delivery: DeliveryPolicy = DeliveryPolicy()
    start: Literal["earliest", "latest"] = "latest"
    reply_to: str | None = None
    """A topic for the events a sink answers with: a webhook's 200 with a CloudEvent
    body, or an Event a handler returns. Without it, replies are ignored."""

    @property
    def group_name(self) -> str:
        """The consumer group this subscription reads as."""
        return self.group or self.name


class Listener(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One server socket of the sidecar, and what one client may hold of it."""

    host: str = "127.0.0.1"
    port: int = 0
    max_connections: int = 1000
    """Connections open at once; a new one above this is closed at once (HTTP answers it
    503 first), so a flood of idle clients cannot take every file descriptor."""
    header_timeout: Duration = Duration(10.0)
    """Seconds a request may take to send its headers, from its first byte (from the
    connection's start for the first request); a slower one is disconnected. On the gRPC
    port, the time a new connection has to finish its HTTP/2 handshake, and a Subscribe
    stream to send its 'open'."""
    tls: TlsConfig | None = None
    """Serve TLS with this certificate and key; with ``client_ca_file``, mTLS
    (docs/security.md). Files are read again when they change."""

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        check_range("header_timeout", self.header_timeout, 0, 3600, above=True, unit="s")


class HttpListener(Listener, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The HTTP API (Apache EventMesh's port)."""

    port: int = 10105
    max_event_size: int = 1024 * 1024
    """Bytes; a larger event is refused with 413."""
    max_request_size: int = 16 * 1024 * 1024
    """Bytes; a larger request body (a batch) is refused with 413. A compressed body
    (``Content-Encoding: gzip`` or ``deflate``) is held to it both as sent and as
    decompressed."""
    body_timeout: Duration = Duration(30.0)
    """Seconds a request may take to send its body once its headers are in; a slower
    one is answered 408 and disconnected."""
    keepalive_timeout: Duration = Duration(75.0)
    """Seconds an idle connection is kept open for the client's next request."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("body_timeout", "keepalive_timeout"):
            check_range(name, getattr(self, name), 0, 3600, above=True, unit="s")


class GrpcListener(Listener, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The gRPC API (Apache EventMesh's port)."""

    port: int = 10205
    max_event_size: int = 1024 * 1024
    """Bytes of one serialized CloudEvent; a larger one fails the call with
    RESOURCE_EXHAUSTED."""
    max_request_size: int = 16 * 1024 * 1024
    """Bytes; a larger request message (a batch) fails the call with RESOURCE_EXHAUSTED."""
    max_concurrent_rpcs: int = 1000
    """Calls in progress at once over all connections (each Subscribe stream is one);
    one more fails at once with RESOURCE_EXHAUSTED."""
    max_concurrent_streams: int = 100
    """Calls in progress at once on one connection (HTTP/2 streams)."""
    idle_timeout: Duration = Duration(300.0)
    """Seconds a connection with no call in progress is kept open."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_concurrent_rpcs", "max_concurrent_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        check_range("idle_timeout", self.idle_timeout, 0, 86400, above=True, unit="s")


class AdminListener(Listener, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Health, readiness and metrics (Apache EventMesh's admin port). It has its own
    connection cap, so probes answer while the public ports are saturated."""

    port: int = 10106
    max_connections: int = 100


class WebhookConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the mesh POSTs to webhook sinks, and where it may."""

    allowed_networks: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Networks (CIDR) a webhook's address may resolve into. Hosts named in this file's
    webhook sinks are allowed as well; a sink created through the API must resolve into
    one of these. Checked after DNS resolution, at every connection."""
    max_connections: int = 100
    """Keep-alive connections kept open across all webhook sinks."""


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The sidecar daemon's listeners (Apache EventMesh's default ports)."""

    http: HttpListener = HttpListener()
    grpc: GrpcListener = GrpcListener()
    admin: AdminListener = AdminListener()
    webhook: WebhookConfig = WebhookConfig()
    shutdown_timeout: Duration = Duration(30.0)
    """On SIGTERM, how long in-flight deliveries may take to finish."""
    insecure: bool = False
    """Allow a listener on a non-loopback address without ``auth`` and TLS. Without it,
    ``eventmesh run`` refuses to start so (docs/security.md)."""

    def exposed(self, *, auth: bool) -> list[str]:
        """The listeners that would serve beyond this host without both ``auth`` and
        TLS (empty when each is on loopback, or has TLS while auth is on)."""
        out = []
        for name in ("http", "grpc", "admin"):
            listener: Listener = getattr(self, name)
            if not _loopback(listener.host) and not (auth and listener.tls is not None):
                out.append(name)
        return out


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LoggingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the daemon logs (library code only emits records)."""

    enabled: bool = True
    """False: the daemon writes no log records at all."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    """``auto``: readable on a terminal, JSON lines otherwise."""
    payload: bool = False
    """True: delivery records carry the event's data too (off: it may hold personal data)."""


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The OpenTelemetry metrics served on the admin ``/metrics`` (docs/operations.md)."""

    enabled: bool = True
    max_label_sets: int = 1000
    """Distinct topics and subscriptions that get their own labels; beyond this number
    new ones are counted under ``other``, so a busy mesh cannot grow ``/metrics`` without
    bound."""


class TracingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """OpenTelemetry tracing, exported through OTLP over HTTP (docs/operations.md)."""

    enabled: bool | None = None
    """None (the default): on when ``endpoint`` is set."""
    endpoint: str | None = None
    """The collector's OTLP/HTTP traces URL, e.g. ``http://127.0.0.1:4318/v1/traces``;
    unset with ``enabled: true``, the exporter's own default and ``OTEL_EXPORTER_OTLP_*``
    variables apply."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Sent with every export (e.g. an authorization header)."""
    sample_ratio: float = 1.0
    """The share of new traces recorded, 0 to 1; an event that arrives with a sampled
    ``traceparent`` is recorded whatever the ratio. The mesh draws for each new trace
    itself, also with a ``tracer_provider`` of your own, whose sampler then sees only
    the traces kept (leave it at 1 to let that sampler decide alone)."""
    service_name: str = "eventmesh"
    timeout: Duration = Duration(10.0)
    """How long one export may take."""

    @property
    def on(self) -> bool:
        """Whether spans are made and exported."""
        return self.enabled if self.enabled is not None else self.endpoint is not None


class LimitsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Bounds on the state a mesh keeps for names its clients choose (docs/operations.md)."""

    max_topics: int = 10_000
    """Distinct topics one mesh publishes to or subscribes to; one more is refused (429)."""
    max_subscriptions: int = 1_000
    """Subscriptions one mesh holds at once (config file, API and SDK together)."""
    max_name_length: int = 249
    """Characters of a topic, subscription or group name (Kafka's own topic limit)."""
    filters: FilterLimits = FilterLimits()
    """Size, nesting and evaluation bounds of filter and transform specs."""
    max_pending_requests: int = 10_000
    """Requests (``request()``, ``POST /request/{topic}``) waiting for replies at once;
    one more is refused (429)."""
    max_request_timeout: Duration = Duration(300.0)
    """The longest a request may wait for its reply; a longer timeout is refused (400)."""

    def __post_init__(self) -> None:
        for name in ("max_topics", "max_subscriptions", "max_name_length", "max_pending_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_request_timeout <= 0:
            raise ValueError("max_request_timeout must be above 0")


def _default_connectors() -> dict[str, ConnectorSpec]:
    return {"default": ConnectorSpec(type="memory", config=MemoryConfig())}


class MeshConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole configuration of a mesh."""

    connectors: dict[str, ConnectorSpec] = msgspec.field(default_factory=_default_connectors)
    topics: dict[str, TopicConfig] = msgspec.field(default_factory=dict)
    default_connector: str = "default"
    """The connector for topics not listed under ``topics:``."""
    subscriptions: list[SubscriptionConfig] = msgspec.field(default_factory=list)
    functions: list[FunctionConfig] = msgspec.field(default_factory=list)
    """Functions triggered by events (docs/functions.md)."""
    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    """How callers of the sidecar prove who they are (docs/security.md)."""
    acl: list[AclRule] = msgspec.field(default_factory=list)
    """What each principal may do; with ``auth`` on, what no rule grants is denied."""

    def connector_for(self, topic: str) -> str:
        """The name of the connector that stores ``topic``."""
        spec = self.topics.get(topic)
        if spec is None or spec.connector is None:
            return self.default_connector
        return spec.connector


# -- loading --------------------------------------------------------------------------


def convert(data: Any, kind: type[_T], *, key: str) -> _T:
    """Check ``data`` against a config struct, as the file loader does; ConfigError at ``key``."""
    try:
        return msgspec.convert(data, kind, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        error = _config_error(str(exc), [], None, kind)
        inner = f".{error.key}" if error.key else ""
        message = str(error).removeprefix(f"{error.key}: ") if error.key else str(error)
        raise ConfigError(message, key=f"{key}{inner}") from exc


def _dec_hook(kind: type, obj: Any) -> Any:
    if kind is Duration:
        return parse_duration(obj)
    raise NotImplementedError(f"cannot decode {kind!r}")


def load_config(
    source: str | Path | Mapping[str, Any] | MeshConfig | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    import_handlers: bool = False,
    default_connectors: Mapping[str, Any] | None = None,
) -> MeshConfig:
    """Load and check a configuration.

    ``source`` is a YAML file path, a mapping shaped like the file, a ready
    ``MeshConfig`` (returned as is when there is nothing to override) or None (the
    defaults: one in-memory connector). ``env`` is searched for ``EVENTMESH__``
    variables; ``overrides`` maps dotted keys to values and wins over both. With
    ``import_handlers``, every ``module:function`` handler of a subscription or function
    is imported too, so a check fails exactly when starting the mesh would.
    ``default_connectors`` (shaped like the file's ``connectors:``) replaces the one
    in-memory connector when the configuration names none (``eventmesh run`` gives the
    local store). Raises ConfigError naming the key and, for files, the line.
    """
    if isinstance(source, MeshConfig) and not env and not overrides:
        _check(source, None)
        return source
    nodes: yaml.Node | None = None
    if source is None:
        data: Any = {}
    elif isinstance(source, MeshConfig):
        data = _to_data(source)
    elif isinstance(source, Mapping):
        data = _deep_copy(source)
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
        data, nodes = _parse_yaml(text, str(path))
        data = _with_default_connectors(data, default_connectors)
        try:
            return _load(data, nodes, env or {}, overrides or {}, import_handlers)
        except ConfigError as exc:
            raise _in_file(exc, path) from exc
    data = _with_default_connectors(data, default_connectors)
    return _load(data, nodes, env or {}, overrides or {}, import_handlers)


def _with_default_connectors(data: Any, defaults: Mapping[str, Any] | None) -> Any:
    if defaults is None or not (data is None or isinstance(data, dict)):
        return data
    data = data or {}
    if "connectors" not in data:
        data["connectors"] = _deep_copy(defaults)
    return data


def with_data_dir(config: MeshConfig, data_dir: str) -> MeshConfig:
    """``config`` with each ``type: local`` connector that names no ``data_dir`` keeping
    its store in ``data_dir`` (the daemon's ``--data-dir``, or ``connect(data_dir=)``)."""
    from eventmesh.connectors.local import LocalConfig

    connectors = dict(config.connectors)
    for name, spec in connectors.items():
        if spec.type == "local":
            local = spec.config if isinstance(spec.config, LocalConfig) else LocalConfig()
            if local.data_dir is None:
                local = msgspec.structs.replace(local, data_dir=str(data_dir))
                connectors[name] = msgspec.structs.replace(spec, config=local)
    return msgspec.structs.replace(config, connectors=connectors)


def _in_file(error: ConfigError, path: Path) -> ConfigError:
    """``error`` with the file it is about named first, keeping its key and line."""
    text = str(error)
    named = ConfigError(f"{path}, {text}" if text.startswith("line ") else f"{path}: {text}")
    named.key, named.line = error.key, error.line
    return named


def _load(
    data: Any,
    nodes: yaml.Node | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Any],
    import_handlers: bool,
) -> MeshConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping of keys to values", line=1)
    variables: dict[str, str] = {}  # dotted key -> the variable or flag that set it
    try:
        setting = [(k, v, f"the environment variable {n}") for n, k, v in _env_overrides(env)]
        setting += [
            ([_index(p, f"--set {k}") for p in k.split(".")], v, f"--set {k}")
            for k, v in overrides.items()
        ]
        for key, value, setter in setting:
            variables[_dotted(key)] = setter
            try:
                _set_path(data, key, value)
            except ConfigError as exc:  # its key is a parent of this one
                variables[exc.key or ""] = setter
                raise
        return _build(data, nodes, env, import_handlers)
    except ConfigError as exc:
        found = _setter(exc.key, variables)
        if found is None:
            raise
        named = ConfigError(f"{exc} (set by {found})")
        named.key, named.line = exc.key, exc.line
        raise named from exc


def _setter(key: str | None, variables: Mapping[str, str]) -> str | None:
    """What set ``key`` or the nearest of its parents from outside the file, if anything."""
    while key:
        if key in variables:
            return variables[key]
        cut = max(key.rfind("."), key.rfind("["))
        key = key[:cut] if cut > 0 else ""
    return None


def _build(
    data: dict[str, Any], nodes: yaml.Node | None, env: Mapping[str, str], import_handlers: bool
) -> MeshConfig:
    config = _convert(data, nodes, env)
    _check(config, nodes)
    if config.auth.tokens:  # tokens from files and variables, read once and kept as digests
        config = msgspec.structs.replace(config, auth=resolve_tokens(config.auth, env))
    if config.acl and not config.auth.enabled:
        raise ConfigError(
            "acl rules are only enforced for authenticated callers: configure auth "
            "(tokens, jwt or client_certs) too, or remove acl",
            key="acl",
            line=_line(nodes, ["acl"]),
        )
    if import_handlers:
        _import_handlers(config, nodes)
    return config


def _import_handlers(config: MeshConfig, nodes: yaml.Node | None) -> None:
    """Import each configured handler as starting the mesh does; ConfigError at its key."""
    from eventmesh._imports import import_callable

    targets: list[tuple[list[str | int], str]] = [
        (["subscriptions", i, "sink", "handler"], sub.sink.handler)
        for i, sub in enumerate(config.subscriptions)
        if sub.sink is not None and sub.sink.handler is not None
    ]
    targets += [
        (["functions", i, "handler"], spec.handler)
        for i, spec in enumerate(config.functions)
        if spec.url is None and spec.handler is not None
    ]
    for path, target in targets:
        try:
            import_callable(target, where=f"handler {target!r}")
        except ConfigError as exc:
            raise ConfigError(str(exc), key=_dotted(path), line=_line(nodes, path)) from exc


def _parse_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"{where} is not valid YAML: {exc.problem}", line=line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    return data, node


def _to_data(config: MeshConfig) -> dict[str, Any]:
    """A MeshConfig as the mapping a file would give, so it can be overridden and reloaded."""
    data: dict[str, Any] = msgspec.to_builtins(
        msgspec.structs.replace(config, connectors={}), enc_hook=float
    )
    data["connectors"] = {
        name: {"type": spec.type, **msgspec.to_builtins(spec.config or {}, enc_hook=float)}
        for name, spec in config.connectors.items()
    }
    return data


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_deep_copy(v) for v in value]
    return value


_MAX_INDEX_DIGITS: Final = 9
"""Digits of a list index in an override's key: no list is longer than 999,999,999."""


def _index(part: str, setter: str) -> str | int:
    """One part of an override's key: a list index when it is digits, else a key.

    Only ASCII digits, at most :data:`_MAX_INDEX_DIGITS`, make an index; other digits
    (``²``, which ``str.isdigit`` takes) or a longer run raise ConfigError naming
    ``setter`` (``--set KEY`` or the variable), rather than ``int``'s ValueError.
    """
    if not part.isdigit():
        return part
    if part.isascii() and len(part) <= _MAX_INDEX_DIGITS:
        return int(part)
    raise ConfigError(
        f"{_cut(part, 20)!r} in an override's key is not a list index: write an index in the "
        f"ASCII digits 0-9, at most {_MAX_INDEX_DIGITS} of them (set by {_cut(setter)})"
    )


def _cut(text: str, most: int = 120) -> str:
    """``text`` for a message, cut to about ``most`` characters."""
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, list[str | int], Any]]:
    found = []
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX):
            continue
        setter = f"the environment variable {name}"
        path = [_index(p.lower(), setter) for p in name[len(ENV_PREFIX) :].split("__")]
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        found.append((name, path, value))
    return found


def _set_path(data: dict[str, Any], path: list[str | int], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ConfigError(
                    "an override indexes past the end of a list", key=_dotted(path[: i + 1])
                )
            node = node[part]
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = [] if isinstance(nxt, int) else {}
        node = child
    last = path[-1]
    if isinstance(node, dict):
        node[last] = value
        return
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
        return
    raise ConfigError("an override does not fit the configuration", key=_dotted(path))


def _dotted(path: list[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _convert(data: dict[str, Any], nodes: yaml.Node | None, env: Mapping[str, str]) -> MeshConfig:
    raw_connectors = data.pop("connectors", None)
    try:
        config = msgspec.convert(data, MeshConfig, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        if "`$.topics[...]" in str(exc):  # msgspec does not name the topic: find it
            for name, spec in data["topics"].items():
                try:
                    msgspec.convert(spec, TopicConfig, dec_hook=_dec_hook)
                except msgspec.ValidationError as inner:
                    at: list[str | int] = ["topics", name]
                    raise _config_error(str(inner), at, nodes, TopicConfig) from exc
        raise _config_error(str(exc), [], nodes, MeshConfig) from exc
    if raw_connectors is None:
        return config
    if not isinstance(raw_connectors, dict):
        raise ConfigError(
            "expected a mapping of connector names to settings",
            key="connectors",
            line=_line(nodes, ["connectors"]),
        )
    connectors = {}
    for name, raw in raw_connectors.items():
        where: list[str | int] = ["connectors", name]
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(
                "expected a mapping with a 'type' and the connector's settings",
                key=_dotted(where),
                line=_line(nodes, where),
            )
        options = _resolve_secrets(dict(raw), env, where, nodes)
        kind = options.pop("type", "memory")
        connectors[name] = ConnectorSpec(
            type=kind, config=_plugin_config(kind, options, where, nodes)
        )
    return msgspec.structs.replace(config, connectors=connectors)


def _resolve_secrets(
    options: dict[str, Any],
    env: Mapping[str, str],
    where: list[str | int],
    nodes: yaml.Node | None,
) -> dict[str, Any]:
    """A connector's options with each secret field (``password``, ``token``,
    ``sasl_plain_password``... as :func:`eventmesh._redact.is_secret_name` says) given as
    ``{env: NAME}`` or ``{file: PATH}`` replaced by the variable's value or the file's
    text, read once, here; ConfigError naming the key when it is unset or unreadable."""
    from eventmesh._redact import is_secret_name

    for name, value in options.items():
        if not (isinstance(name, str) and is_secret_name(name) and isinstance(value, dict)):
            continue
        path = [*where, name]
        source = set(value)
        if len(value) != 1 or not source <= {"env", "file"}:
            raise ConfigError(
                "a secret is a string, {env: VARIABLE} or {file: PATH}",
                key=_dotted(path),
                line=_line(nodes, path),
            )
        ((kind, ref),) = value.items()
        try:
            options[name] = read_secret(kind, str(ref), env)
        except ValueError as exc:
            raise ConfigError(str(exc), key=_dotted(path), line=_line(nodes, path)) from exc
    return options


def _plugin_config(
    kind: Any, options: dict[str, Any], where: list[str | int], nodes: yaml.Node | None
) -> Any:
    from eventmesh.connectors.registry import load_connector

    if not isinstance(kind, str):
        raise ConfigError(
            f"'type' must be a connector name, got {kind!r}",
            key=_dotted([*where, "type"]),
            line=_line(nodes, [*where, "type"]),
        )
    try:
        cls = load_connector(kind)
    except EventMeshError as exc:
        raise ConfigError(
            str(exc), key=_dotted([*where, "type"]), line=_line(nodes, [*where, "type"])
        ) from exc
    try:
        return msgspec.convert(options, cls.Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise _config_error(str(exc), where, nodes, cls.Config) from exc


def _config_error(
    message: str, prefix: list[str | int], nodes: yaml.Node | None, kind: Any
) -> ConfigError:
    """Turn msgspec's '... - at `$.a[0].b`' into a ConfigError with the key and line;
    ``kind`` is the config type at ``prefix``, which names the valid keys and values."""
    path: list[str | int] = list(prefix)
    steps: list[str | int] = []
    match = _PATH.search(message)
    if match:
        message = message[: match.start()]
        for name, index in _STEP.findall(match.group("path")):
            steps.append(int(index) if index else name)
    path += steps
    unknown = re.match(r"Object contains unknown field `([^`]+)`", message)
    if unknown:
        name = unknown.group(1)
        path.append(name)
        fields = getattr(_type_at(kind, steps), "fields", ())
        close = difflib.get_close_matches(name, [f.encode_name for f in fields], n=1)
        hint = f"did you mean {close[0]!r}?" if close else "check its spelling"
        message = f"unknown key {name!r}; {hint} (see docs/configuration.md)"
    elif message.startswith("Invalid enum value"):
        values = _literal_values(_type_at(kind, steps))
        if values:
            message += f"; expected one of {', '.join(map(repr, values))}"
    return ConfigError(message, key=_dotted(path) or None, line=_line(nodes, path))


def _type_at(kind: Any, steps: list[str | int]) -> msgspec.inspect.Type | None:
    """The msgspec type found by following ``steps`` (keys and indexes) from ``kind``."""
    try:
        found: msgspec.inspect.Type | None = msgspec.inspect.type_info(kind)
    except TypeError:  # not a type msgspec knows (a plugin's odd Config)
        return None
    for step in steps:
        found = _step(found, step)
    return found


def _step(found: msgspec.inspect.Type | None, step: str | int) -> msgspec.inspect.Type | None:
    if isinstance(found, msgspec.inspect.UnionType):  # e.g. SinkConfig | None
        inner = [t for t in found.types if not isinstance(t, msgspec.inspect.NoneType)]
        found = inner[0] if len(inner) == 1 else None
    if isinstance(found, msgspec.inspect.StructType):
        return next((f.type for f in found.fields if f.encode_name == step), None)
    if isinstance(found, msgspec.inspect.ListType | msgspec.inspect.DictType):
        return found.item_type if isinstance(found, msgspec.inspect.ListType) else found.value_type
    return None


def _literal_values(found: msgspec.inspect.Type | None) -> list[Any]:
    """The values a Literal type (or an optional one) allows; empty for any other type."""
    if isinstance(found, msgspec.inspect.UnionType):
        return [v for t in found.types for v in _literal_values(t)]
    if isinstance(found, msgspec.inspect.LiteralType):
        return list(found.values)
    return []


def _line(nodes: yaml.Node | None, path: list[str | int]) -> int | None:
    """The 1-based line of the key at ``path`` in the YAML file, or of its nearest parent."""
    if nodes is None:
        return None
    node: yaml.Node = nodes
    line = node.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _check(config: MeshConfig, nodes: yaml.Node | None) -> None:
    """The checks that span keys: names, references, and pipelines that must compile."""

    def fail(message: str, path: list[str | int]) -> ConfigError:
        return ConfigError(message, key=_dotted(path), line=_line(nodes, path))

    for name in config.connectors:
        if not _NAME.match(name):
            raise fail(
                "connector names use letters, digits, '.', '_' and '-'", ["connectors", name]
            )
    if config.default_connector not in config.connectors:
        raise fail(
            f"no connector named {config.default_connector!r} under 'connectors' "
            f"(defined: {', '.join(config.connectors) or 'none'})",
            ["default_connector"],
        )
    for topic, spec in config.topics.items():
        if len(topic) > config.limits.max_name_length:
            raise fail(
                f"the topic name is {len(topic)} characters, more than "
                f"limits.max_name_length ({config.limits.max_name_length}) allows",
                ["topics", topic[:40]],
            )
        if spec.connector is not None and spec.connector not in config.connectors:
            raise fail(
                f"topic {topic!r} names connector {spec.connector!r}, which is not defined "
                f"under 'connectors' (defined: {', '.join(config.connectors)})",
                ["topics", topic, "connector"],
            )
    limits = config.limits
    if len(config.subscriptions) > limits.max_subscriptions:
        raise fail(
            f"{len(config.subscriptions)} subscriptions, more than limits.max_subscriptions "
            f"({limits.max_subscriptions}) allows; raise the limit",
            ["subscriptions"],
        )
    seen: set[str] = set()
    for i, sub in enumerate(config.subscriptions):
        where: list[str | int] = ["subscriptions", i]
        for name_key in ("name", "topic", "group", "reply_to"):
            value = getattr(sub, name_key)
            if value is not None and len(value) > limits.max_name_length:
                raise fail(
                    f"{len(value)} characters, more than limits.max_name_length "
                    f"({limits.max_name_length}) allows",
                    [*where, name_key],
                )
        if sub.name in seen:
            raise fail(f"a subscription named {sub.name!r} is already defined", [*where, "name"])
        seen.add(sub.name)
        if sub.sink is None:
            raise fail(
                f"subscription {sub.name!r} needs a sink: 'handler: module:function' "
                "or 'webhook: URL'",
                where,
            )
        kinds = [k for k in ("handler", "webhook") if getattr(sub.sink, k) is not None]
        if len(kinds) != 1:
            raise fail("a sink names exactly one of 'handler' or 'webhook'", [*where, "sink"])
        if sub.sink.webhook is not None and not sub.sink.webhook.startswith(
            ("http://", "https://")
        ):
            raise fail(
                f"webhook {redact_url(sub.sink.webhook)!r} must be an http:// or https:// URL",
                [*where, "sink", "webhook"],
            )
        problem = sub.sink.problem()
        if problem is not None:
            key, message = problem
            raise fail(message, [*where, "sink", *key.split(".", 1)])
        if sub.sink.handler is not None and ":" not in sub.sink.handler:
            raise fail(
                f"handler {sub.sink.handler!r} must look like 'package.module:function'",
                [*where, "sink", "handler"],
            )
        try:  # here, so the error names the file's line, not only the mesh's start
            sub.delivery.dead_letter_topic(sub.topic, sub.group_name)
        except ConfigError as exc:
            message = str(exc).removeprefix(f"{exc.key}: ")
            raise fail(
                f"subscription {sub.name!r}: {message}", [*where, "delivery", "dead_letter"]
            ) from exc
        from eventmesh.pipeline.compile import compile_pipeline

        try:
            compile_pipeline(sub.filter, sub.transform, where=_dotted(where), limits=limits.filters)
        except ConfigError as exc:
            # The pipeline names the exact spot inside the spec; find its line in the file.
            key = exc.key or _dotted(where)
            path: list[str | int] = []
            for name, index in _STEP.findall("." + key):
                path.append(int(index) if index else name)
            message = str(exc).removeprefix(f"{exc.key}: ") if exc.key else str(exc)
            raise ConfigError(
                f"subscription {sub.name!r}: {message}", key=key, line=_line(nodes, path)
            ) from exc
    _check_server(config, fail)
    _check_observability(config, fail)
    _check_functions(config, fail)


def _check_server(config: MeshConfig, fail: Callable[[str, list[str | int]], ConfigError]) -> None:
    """The listeners' ports and limits, and the webhook allow-list."""
    server = config.server
    for name in ("http", "grpc", "admin"):
        listener = getattr(server, name)
        if not 0 <= listener.port <= 65535:
            raise fail("a port is between 0 (any free port) and 65535", ["server", name, "port"])
    for name in ("http", "grpc"):
        for key in ("max_event_size", "max_request_size"):
            if getattr(getattr(server, name), key) < 1:
                raise fail("a size limit is a number of bytes above 0", ["server", name, key])
    if server.webhook.max_connections < 1:
        raise fail("max_connections must be at least 1", ["server", "webhook", "max_connections"])
    for i, network in enumerate(server.webhook.allowed_networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise fail(
                f"{network!r} is not a network; write it as CIDR, e.g. 10.0.0.0/8",
                ["server", "webhook", "allowed_networks", i],
            ) from None


def _check_observability(
    config: MeshConfig, fail: Callable[[str, list[str | int]], ConfigError]
) -> None:
    """The metrics label bound and the tracing exporter's settings."""
    if config.metrics.max_label_sets < 1:
        raise fail("max_label_sets must be at least 1", ["metrics", "max_label_sets"])
    tracing = config.tracing
    if not 0.0 <= tracing.sample_ratio <= 1.0:
        raise fail(
            "sample_ratio is a share between 0 and 1, e.g. 0.01 for 1 %",
            ["tracing", "sample_ratio"],
        )
    if tracing.endpoint is not None and not tracing.endpoint.startswith(("http://", "https://")):
        raise fail(
            "endpoint is the collector's OTLP/HTTP URL, e.g. http://127.0.0.1:4318/v1/traces",
            ["tracing", "endpoint"],
        )
    if float(tracing.timeout) <= 0:
        raise fail("timeout must be above 0 seconds", ["tracing", "timeout"])


def _check_functions(
    config: MeshConfig, fail: Callable[[str, list[str | int]], ConfigError]
) -> None:
    """Function names are unique (and no subscription's), each declaration consistent."""
    taken = {sub.name for sub in config.subscriptions}
    seen: set[str] = set()
    for i, spec in enumerate(config.functions):
        where: list[str | int] = ["functions", i]
        if spec.name in seen:
            raise fail(f"a function named {spec.name!r} is already defined", [*where, "name"])
        if spec.name in taken:
            raise fail(
                f"a subscription is named {spec.name!r} too; functions and subscriptions "
                "share one namespace",
                [*where, "name"],
            )
        seen.add(spec.name)
        problem = check_function(spec, limits=config.limits.filters)
        if problem is not None:
            message, path = problem
            raise fail(f"function {spec.name!r}: {message}", [*where, *path])
