"""Importing user code named in configuration (``"package.module:function"``), and the
optional dependencies that eventmesh's extras install (``pip install 'eventmesh[sidecar]'``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from eventmesh.errors import ConfigError, MissingExtraError

__all__ = ["EXTRAS", "import_callable", "needs_extra"]

EXTRAS: Final = {
    "aiohttp": "sidecar",
    "cryptography": "sidecar",
    "google": "sidecar",  # protobuf
    "grpc": "sidecar",
    "grpc_reflection": "sidecar",
    "jwt": "sidecar",
    "uvloop": "sidecar",
    "opentelemetry": "otel",
    "prometheus_client": "prometheus",
    "rich": "cli",
    "cloudevents": "cloudevents",
    "hypothesis": "testing",
    "pytest": "testing",
}
"""The extra that installs each optional import (by top-level name); pyproject.toml's
``[project.optional-dependencies]`` is the other half (tests/test_extras.py checks both)."""


@contextmanager
def needs_extra(what: str) -> Iterator[None]:
    """Around the imports of an optional feature: a missing optional dependency becomes a
    :class:`MissingExtraError` saying that ``what`` needs its extra, and how to install it::

        with needs_extra("the sidecar"):
            from eventmesh.server.sidecar import Sidecar

    Any other missing module (one of ours, a user's) is raised as it is.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        raise MissingExtraError(
            f"{what} needs the {extra!r} extra (no module named {exc.name!r}): "
            f"pip install 'eventmesh[{extra}]'",
            extra=extra,
        ) from exc


def import_callable(target: str, *, where: str) -> Callable[..., Any]:
    """The callable ``target`` names; ConfigError (naming ``where``) when it cannot be had."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{where}: {target!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{where}: cannot import module {module_name!r} ({exc}); is it installed and on "
            "the Python path?"
        ) from exc
    except Exception as exc:  # the user's module raised while it was imported
        raise ConfigError(f"{where}: importing module {module_name!r} failed: {exc!r}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"{where}: module {module_name!r} has no attribute {attr!r}") from exc
    if not callable(obj):
        raise ConfigError(f"{where}: {target!r} is not callable")
    return obj  # type: ignore[no-any-return]
