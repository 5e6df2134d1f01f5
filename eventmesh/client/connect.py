"""``eventmesh.connect()``: one call for an embedded mesh or, later, a remote sidecar."""

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
    YAML path, a mapping or a MeshConfig; by default one in-memory connector).
    """
    if target is None:
        from eventmesh.mesh import Mesh

        return Mesh(config)
    if target.startswith(("http://", "https://", "grpc://")):
        raise ConfigError(
            f"cannot connect to {target!r}: this version of eventmesh runs the mesh "
            "embedded only (call connect() without an address); the remote sidecar "
            "transports are not part of it yet"
        )
    raise ConfigError(
        f"cannot connect to {target!r}: use no address for an embedded mesh, or an "
        "http:// or grpc:// sidecar address"
    )
