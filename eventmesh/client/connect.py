"""``eventmesh.connect()``: one call for an embedded mesh or a remote sidecar."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eventmesh._client import Client
from eventmesh._imports import needs_extra
from eventmesh.config import MeshConfig, load_config, with_data_dir
from eventmesh.errors import ConfigError

__all__ = ["connect"]


def connect(
    target: str | None = None,
    *,
    config: MeshConfig | Mapping[str, Any] | str | Path | None = None,
    token: str | None = None,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> Client:
    """A client to use as ``async with eventmesh.connect() as mesh``.

    With no ``target`` the mesh runs inside this process, configured by ``config`` (a
    YAML path, a mapping or a MeshConfig; by default one in-memory connector). With
    ``"http://host:port"`` or ``"grpc://host:port"`` the client talks to a sidecar
    (``eventmesh run``) with the same API; ``config`` is then not used.
    ``"https://..."`` and ``"grpcs://..."`` speak TLS, trusting ``ca_file`` (the
    system's CAs when None) and presenting ``cert_file`` and ``key_file`` to a sidecar
    that asks for a client certificate. ``token`` is sent as a bearer token on every
    request. ``data_dir`` makes an embedded mesh durable: with no connectors configured,
    events are kept in the local store in that directory (and any ``type: local``
    connector without a ``data_dir`` keeps its store there). Raises ``ConfigError`` for a
    bad address, token or TLS file.
    """
    if target is None:
        remote = {"token": token, "ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
        named = [name for name, value in remote.items() if value is not None]
        if named:
            verb = "is" if len(named) == 1 else "are"
            raise ConfigError(
                f"{', '.join(n + '=' for n in named)} {verb} only for a sidecar address "
                "(connect('https://host:port', ...)); an embedded mesh needs no credentials"
            )
        from eventmesh.mesh import Mesh

        if data_dir is not None:
            local = {"default": {"type": "local"}}
            loaded = load_config(config, default_connectors=local)
            return Mesh(with_data_dir(loaded, str(data_dir)))
        return Mesh(config)
    if config is not None or data_dir is not None:
        raise ConfigError(
            f"connect({target!r}) talks to a sidecar, which has its own configuration; "
            "pass config= and data_dir= only without an address"
        )
    if target.startswith(("http://", "https://")):
        with needs_extra(f"connect({target!r})"):
            from eventmesh.client.http import HttpClient

        return HttpClient(
            target, token=token, ca_file=ca_file, cert_file=cert_file, key_file=key_file
        )
    if target.startswith(("grpc://", "grpcs://")):
        with needs_extra(f"connect({target!r})"):
            from eventmesh.client.grpc import GrpcClient

        scheme, _, address = target.partition("://")
        if not address.rstrip("/"):
            raise ConfigError(f"{target!r} names no host: use {scheme}://host:port")
        return GrpcClient(
            target, token=token, ca_file=ca_file, cert_file=cert_file, key_file=key_file
        )
    raise ConfigError(
        f"cannot connect to {target!r}: use no address for an embedded mesh, or an "
        "http:// or grpc:// sidecar address (https:// or grpcs:// for TLS)"
    )
