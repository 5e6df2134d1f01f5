"""Finding connectors by name through the ``eventmesh.connectors`` entry-point group.

The built-in memory connector registers itself the same way as any plugin, in
eventmesh's own ``pyproject.toml``, so there is one path for all of them.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from eventmesh.connectors.base import Connector
from eventmesh.errors import PluginLoadError, PluginNotFoundError

__all__ = ["ENTRY_POINT_GROUP", "available_connectors", "load_connector"]

ENTRY_POINT_GROUP = "eventmesh.connectors"


@cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_connectors() -> list[str]:
    """The names of every installed connector, sorted."""
    return sorted(_entry_points())


def load_connector(name: str) -> type[Connector]:
    """The connector class registered as ``name``.

    Raises ``PluginNotFoundError`` (with near matches and the install hint) when no
    connector has that name, ``PluginLoadError`` when it is installed but fails to import.
    """
    eps = _entry_points()
    ep = eps.get(name)
    if ep is None:
        close = difflib.get_close_matches(name, eps, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PluginNotFoundError(
            f"no connector named {name!r} is installed (installed: "
            f"{', '.join(sorted(eps)) or 'none'}).{hint} Misspelled, or not installed? "
            f"Connectors are separate packages: pip install eventmesh-{name}"
        )
    try:
        cls = ep.load()
    except Exception as exc:  # any import-time failure of a third-party plugin
        raise PluginLoadError(
            f"connector {name!r} is installed ({ep.value}) but failed to load: {exc!r}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise PluginLoadError(
            f"connector {name!r} ({ep.value}) is not a subclass of eventmesh.connectors.Connector"
        )
    return cls
