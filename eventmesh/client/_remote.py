"""What the two remote clients share: the bearer token, the TLS files, the warning for
a token sent in clear text, and the services their subscriptions use.

A token is kept only in the header (HTTP) or the metadata (gRPC) that carries it: no
repr, log line or error message of the SDK shows it, nor how long it is.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import anyio.abc

from eventmesh.delivery.services import Services
from eventmesh.errors import ConfigError
from eventmesh.event import Event
from eventmesh.subscription import Subscription
from eventmesh.tls import client_context

__all__ = [
    "bearer",
    "check_tls_files",
    "is_loopback",
    "read_file",
    "remote_services",
    "ssl_context",
    "warn_clear_text",
]

log = logging.getLogger(__name__)


def bearer(token: object) -> str:
    """The ``Authorization`` value for ``token``; ConfigError (which never shows the
    token) for what cannot travel in a header."""
    if not isinstance(token, str):
        raise ConfigError(f"token must be a string, got a {type(token).__name__}")
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(
            "token must be a non-empty string without spaces, line breaks or control "
            "characters (the token as issued, without 'Bearer ')"
        )
    return f"Bearer {token}"


def check_tls_files(
    target: str,
    *,
    tls: bool,
    ca_file: str | Path | None,
    cert_file: str | Path | None,
    key_file: str | Path | None,
) -> None:
    """ConfigError for TLS files given to a plain address, a key without its
    certificate, or a file that does not exist (named with its parameter)."""
    given = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
    named = [name for name, value in given.items() if value is not None]
    if named and not tls:
        verb = "applies" if len(named) == 1 else "apply"
        raise ConfigError(
            f"{', '.join(named)} {verb} to TLS addresses (https://, grpcs://), and {target} "
            "is plain: use the sidecar's TLS address, or leave the TLS files out"
        )
    if key_file is not None and cert_file is None:
        raise ConfigError("key_file needs cert_file, the client certificate it belongs to")
    for name in named:
        path = Path(str(given[name]))
        if not path.is_file():
            raise ConfigError(f"{name} {str(path)!r} does not exist or is not a file")


def ssl_context(
    ca_file: str | Path | None, cert_file: str | Path | None, key_file: str | Path | None
) -> ssl.SSLContext:
    """A client SSLContext (eventmesh.tls.client_context); ConfigError names the files
    it could not load."""
    try:
        return client_context(
            None if ca_file is None else str(ca_file),
            cert_file=None if cert_file is None else str(cert_file),
            key_file=None if key_file is None else str(key_file),
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        files = ", ".join(repr(str(f)) for f in (ca_file, cert_file, key_file) if f is not None)
        raise ConfigError(
            f"cannot load the TLS files {files} ({exc}); check that they are PEM and that "
            "the key belongs to the certificate"
        ) from exc


def read_file(path: str | Path, name: str) -> bytes:
    """The bytes of a TLS file; ConfigError names the parameter and the file."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {name} {str(path)!r} ({exc.strerror})") from exc


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this
    machine's loopback."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_clear_text(url: str) -> None:
    """Log one warning when a token is about to travel unencrypted to another host."""
    if url.startswith(("unix:", "unix-abstract:")):
        return  # a socket file never leaves the machine
    parts = urlsplit(url if "://" in url else f"//{url}")
    if parts.scheme in ("https", "grpcs") or is_loopback(parts.hostname):
        return
    log.warning(
        "the token for %s travels in clear text over %s; use the sidecar's TLS address "
        "(https:// or grpcs://) beyond this host",
        parts.hostname,
        parts.scheme or "plain gRPC",
    )


def remote_services(
    publish: Callable[[str, Event | Sequence[Event]], Awaitable[object]],
    task_group: anyio.abc.TaskGroup,
    members: dict[int, Subscription],
) -> Services[Subscription]:
    """What a remote client's subscriptions use of it: ``publish`` for their handlers'
    replies, the client's task group for their dispatchers, and ``members``, the
    subscriptions its close closes. No tracing or metrics: the sidecar keeps those."""

    async def reply(topic: str, events: Event | Sequence[Event]) -> None:
        await publish(topic, events)

    def register(subscription: Subscription) -> None:
        members[id(subscription)] = subscription

    def unregister(subscription: Subscription) -> None:
        members.pop(id(subscription), None)

    return Services(
        publish=reply,
        task_group=lambda: task_group,
        register=register,
        unregister=unregister,
    )
