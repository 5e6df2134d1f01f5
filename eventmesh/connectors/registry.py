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


#: The connectors this project publishes, by type name, and the package that installs
#: each. An install hint only ever names one of these: never a package made up from a
#: misspelled type.
_KNOWN_PACKAGES = {"kafka": "eventmesh-kafka", "nats": "eventmesh-nats"}


@cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_connectors() -> list[str]:
    """The names of every installed connector, sorted."""
    return sorted(_entry_points())


def _not_found(name: str, installed: list[str]) -> str:
    """Why no connector is called ``name``, with the nearest real name and how to get it."""
    listed = ", ".join(installed) or "none"
    text = f"no connector named {name!r} is installed (installed: {listed})."
    if name in _KNOWN_PACKAGES:
        return f"{text} Install it: pip install {_KNOWN_PACKAGES[name]}"
    close = difflib.get_close_matches(name, [*installed, *_KNOWN_PACKAGES], n=1)
    if close and close[0] in installed:
        return f"{text} Did you mean {close[0]!r}?"
    if close:
        return f"{text} Did you mean {close[0]!r}? (pip install {_KNOWN_PACKAGES[close[0]]})"
    known = ", ".join(f"{n} (pip install {p})" for n, p in _KNOWN_PACKAGES.items())
    return (
        f"{text} Misspelled, or not installed? This project's connectors are {known}; "
        "a third-party connector is installed from its own package."
    )


def load_connector(name: str) -> type[Connector]:
    """The connector class registered as ``name``.

    Raises ``PluginNotFoundError`` (with the nearest installed name, and the package to
    install only for this project's own connectors) when no connector has that name,
    ``PluginLoadError`` when it is installed but fails to import.
    """
    eps = _entry_points()
    ep = eps.get(name)
    if ep is None:
        raise PluginNotFoundError(_not_found(name, sorted(eps)))
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
