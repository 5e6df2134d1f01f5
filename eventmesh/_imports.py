"""Importing user code named in configuration (``"package.module:function"``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from eventmesh.errors import ConfigError

__all__ = ["import_callable"]


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
