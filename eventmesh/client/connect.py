"""``eventmesh.connect()``: one call for an embedded mesh or a remote sidecar."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eventmesh.client.base import Client
from eventmesh.config import MeshConfig
from eventmesh.errors import ConfigError

__all__ = ["connect"]


def connect(
    target: str | None = None,
    *,
    config: MeshConfig | Mapping[str, Any] | str | Path | None = None,
) -> Client:
    """A client to use as ``async with eventmesh.connect() as mesh``.

    With no ``target`` the mesh runs inside this process, configured by ``config`` (a
    YAML path, a mapping or a MeshConfig; by default one in-memory connector). With
    ``"http://host:port"`` or ``"grpc://host:port"`` the client talks to a sidecar
    (``eventmesh run``) with the same API; ``config`` is then not used.
    """
    if target is None:
        from eventmesh.mesh import Mesh

        return Mesh(config)
    if config is not None:
        raise ConfigError(
            f"connect({target!r}) talks to a sidecar, which has its own configuration; "
            "pass config= only without an address"
        )
    if target.startswith(("http://", "https://")):
        from eventmesh.client.http import HttpClient

        return HttpClient(target)
    if target.startswith("grpc://"):
        from eventmesh.client.grpc import GrpcClient

        address = target.removeprefix("grpc://").rstrip("/")
        if not address:
            raise ConfigError(f"{target!r} names no host: use grpc://host:port")
        return GrpcClient(address)
    raise ConfigError(
        f"cannot connect to {target!r}: use no address for an embedded mesh, or an "
        "http:// or grpc:// sidecar address"
    )
