"""One entry point that turns a subscription's filter and transform specs into callables.

The config loader, the SDK's ``subscribe(filter=..., transform=...)`` and the sidecar's
subscription API all come through here, so they accept exactly the same forms: a spec
in the pipeline's dialects (compiled once, here) or a ready Python callable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eventmesh.errors import ConfigError
from eventmesh.pipeline.limits import DEFAULT_LIMITS, FilterLimits
from eventmesh.typing import Filter, Transform

__all__ = ["compile_pipeline"]


def compile_pipeline(
    filter: Any = None,
    transform: Any = None,
    *,
    where: str = "subscription",
    limits: FilterLimits = DEFAULT_LIMITS,
) -> tuple[Filter | None, Transform | None]:
    """Compile a filter spec and a transform chain; raises ConfigError naming ``where``.

    A spec over one of ``limits`` (its size as JSON, its nesting) is a ConfigError that
    names the limit's config key; the size is checked before anything is parsed. So is
    a spec that makes a compiler raise ValueError, OverflowError or RecursionError (a
    number too large to convert, say): the compilers check what they can, and this is
    the boundary where anything they miss becomes the error a caller expects.
    """
    compiled_filter: Filter | None
    if filter is None:
        compiled_filter = None
    elif callable(filter) and not isinstance(filter, Mapping):
        compiled_filter = filter
    else:
        from eventmesh.pipeline.filters import compile_filter

        try:
            compiled_filter = compile_filter(filter, where=f"{where}.filter", limits=limits)
        except _UNEXPECTED as exc:
            raise _not_compiled("filter", f"{where}.filter", exc) from exc
    compiled_transform: Transform | None
    if transform is None:
        compiled_transform = None
    elif callable(transform) and not isinstance(transform, Mapping | Sequence):
        compiled_transform = _as_transform(transform)
    else:
        from eventmesh.pipeline.transforms import compile_transforms

        if not isinstance(transform, Mapping | Sequence) or isinstance(transform, str | bytes):
            raise ConfigError(
                f"{where}.transform must be a function, a transform step (a mapping) or a "
                f"list of them, got {type(transform).__name__}",
                key=f"{where}.transform",
            )
        steps = [transform] if isinstance(transform, Mapping) else list(transform)
        try:
            compiled_transform = compile_transforms(
                steps, where=f"{where}.transform", limits=limits
            )
        except _UNEXPECTED as exc:
            raise _not_compiled("transform", f"{where}.transform", exc) from exc
    return compiled_filter, compiled_transform


_UNEXPECTED = (ValueError, OverflowError, RecursionError)
"""What a compiler may raise on a hostile spec that it did not foresee."""


def _not_compiled(what: str, where: str, exc: Exception) -> ConfigError:
    problem = "nests too deeply" if isinstance(exc, RecursionError) else f"{exc}"[:200]
    return ConfigError(
        f"the {what} cannot be compiled: {type(exc).__name__}: {problem}; check the values "
        "it holds (numbers of thousands of digits, say)",
        key=where,
    )


def _as_transform(fn: Callable[..., Any]) -> Transform:
    return fn
