"""TLS for the sidecar's listeners and the remote SDK, with certificates that reload.

A listener with ``tls: {cert_file, key_file}`` serves TLS; with ``client_ca_file`` too it
asks every client for a certificate signed by that CA (mTLS) and refuses those without
one. The files are read again when they change on disk (a renewed certificate takes
effect on the next handshake, no restart). docs/security.md has the walk-through.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from eventmesh.errors import ConfigError

__all__ = ["CertReloader", "TlsConfig", "client_context", "server_context"]

log = logging.getLogger(__name__)


class TlsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A listener's certificate and key (PEM files), and the CA that signs client
    certificates when clients must present one (mTLS)."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    min_version: str = "1.2"
    """The oldest TLS version accepted: ``"1.2"`` or ``"1.3"``."""

    def __post_init__(self) -> None:
        if self.min_version not in ("1.2", "1.3"):
            raise ValueError(f"min_version must be '1.2' or '1.3', got {self.min_version!r}")

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate."""
        return self.client_ca_file is not None

    def files(self) -> tuple[str, ...]:
        """The files this configuration reads."""
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)


def server_context(config: TlsConfig, *, key: str = "tls") -> ssl.SSLContext:
    """A server-side SSLContext for ``config``; ConfigError names the file it could not
    load and what is wrong with it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if config.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    _load(context, config, key=key)
    if config.client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca_file: str | None = None, *, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """A client-side SSLContext that trusts ``ca_file`` (the system's CAs when None) and
    presents ``cert_file``/``key_file`` for mTLS when given."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def _load(context: ssl.SSLContext, config: TlsConfig, *, key: str) -> None:
    for name in config.files():
        if not Path(name).is_file():
            raise ConfigError(f"TLS file {name!r} does not exist or is not a file", key=key)
    try:
        context.load_cert_chain(config.cert_file, config.key_file)
        if config.client_ca_file is not None:
            context.load_verify_locations(cafile=config.client_ca_file)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the certificate {config.cert_file!r} with key {config.key_file!r}"
            f"{' and CA ' + repr(config.client_ca_file) if config.client_ca_file else ''}: "
            f"{exc}; check that both are PEM and that the key belongs to the certificate",
            key=key,
        ) from exc


class CertReloader:
    """Watches a TLS configuration's files and loads them again when they change: new
    handshakes get the new certificate, open connections keep theirs. ``check()`` is
    cheap (one ``stat`` per file) and is called by the servers, from a periodic task or
    before a handshake; a broken new file is logged and the old one kept.

    What loading means is ``load``: by default, building a new SSLContext from the files
    and handing each new connection of ``context`` (the one the listener serves with) to
    it as the handshake begins (its ``sni_callback``, which OpenSSL calls whether or not
    the client names a server). Nothing is loaded into a context that serves: a load
    that fails halfway (a certificate renewed before its key) leaves the one in use
    whole, and a CA taken out of ``client_ca_file`` stops being trusted (loading into
    the live context could only add CAs). gRPC's credentials pass their own ``load``.
    """

    def __init__(
        self,
        config: TlsConfig,
        context: ssl.SSLContext | None = None,
        *,
        load: Callable[[], Any] | None = None,
    ) -> None:
        if load is None:
            if context is None:
                raise TypeError("CertReloader needs a context to load into, or a load function")
            self._current = context
            context.sni_callback = self._hand_over

            def load() -> None:
                self._current = server_context(config, key="tls")

        self.config = config
        self.load = load
        self.reloads = 0
        self._stamp = _file_stamps(config)

    def check(self) -> bool:
        """Reload if a file changed since the last look; True when it did reload."""
        stamp = _file_stamps(self.config)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.load()
        except (ConfigError, OSError) as exc:
            log.warning("TLS files changed but could not be loaded, keeping the old ones: %s", exc)
            return False
        self.reloads += 1
        log.info("TLS certificate %s reloaded", self.config.cert_file)
        return True

    def _hand_over(self, connection: ssl.SSLObject, name: str | None, served: Any) -> None:
        """At a handshake's start: the connection takes the context last loaded."""
        current = self._current
        if current is not served:
            connection.context = current


def _file_stamps(config: TlsConfig) -> tuple[tuple[float, int], ...]:
    """The modification time and size of each file ``config`` reads ((0, 0) for one
    that is missing): a change means the files should be loaded again."""
    out = []
    for name in config.files():
        try:
            st = os.stat(name)
        except OSError:
            out.append((0.0, 0))
        else:
            out.append((st.st_mtime, st.st_size))
    return tuple(out)
