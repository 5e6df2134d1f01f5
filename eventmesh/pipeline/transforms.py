"""Transforms: a chain of steps, compiled once, that rewrite or drop an event.

Apache EventMesh's ``original``, ``constant`` and ``template`` change ``data``; ``set``,
``rename``, ``remove`` and ``call`` change attributes or call Python. Every change goes
through :meth:`Event.replace`, so the result is a valid event; a step that raises
becomes a :class:`~eventmesh.errors.PipelineError` naming the step's path, and a step
that returns None drops the event on purpose. See docs/filters.md, 'Transforms'.

Each template renders at most ``limits.max_render`` characters (it replaces the data,
so the data it leaves is no larger than that, or than it was), and the ``set`` steps of
a chain copy at most ``limits.max_render`` characters in all, counted as they are made:
no spec turns a small event into a large one (a template repeating the data, then
copied into a hundred extensions, made 166 MB of a 1 KB event).
"""

from __future__ import annotations

import base64
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, TypeAlias

import msgspec

from eventmesh._imports import import_callable
from eventmesh.bindings import is_json_media_type
from eventmesh.errors import ConfigError, EventValidationError, PipelineError
from eventmesh.event import CONTEXT_ATTRIBUTES, MAX_DATA_DEPTH, Event, check_data_depth, parse_time
from eventmesh.pipeline._jsonpath import (
    MISSING,
    compile_event_path,
    describe,
    join_path,
    rfc3339,
)
from eventmesh.pipeline.limits import (
    DEFAULT_LIMITS,
    FilterLimits,
    check_depth,
    check_size,
    json_size_exceeds,
)
from eventmesh.typing import Transform

__all__ = ["STEP_KINDS", "Transform", "compile_transforms"]


class _Budget:
    """The characters the ``set`` steps of one run of a chain may still copy from the
    event (``max_render``)."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit


Step: TypeAlias = Callable[[Event, _Budget], Event | None]
_Compiler: TypeAlias = Callable[[Any, str, FilterLimits], Step | None]  # None: changes nothing

_NAME: Final = re.compile(r"[a-z0-9]+\Z")
_REQUIRED: Final = frozenset({"id", "source", "type", "specversion"})
_NOT_ATTRIBUTES: Final = frozenset({"data", "data_base64", "extensions"})
_REQUEST_ATTRIBUTES: Final = frozenset({"replyto", "correlationid"})
"""Where a handler's reply goes (eventmesh._requests): the publisher's, never a
transform's. Set by a transform, replies would go to any reply inbox, checked by
nobody: a caller without publish on another caller's inbox could answer its request."""
_PLACEHOLDER: Final = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_GLANCE: Final = 1024
"""Values of a structured template variable looked at before it is encoded."""
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def compile_transforms(
    steps: Sequence[Mapping[str, Any]] | None,
    *,
    where: str,
    limits: FilterLimits = DEFAULT_LIMITS,
) -> Transform | None:
    """Compile a chain of transform steps; None when there is nothing to do.

    ``where`` prefixes the paths in error messages (``subscriptions[0].transform``).
    Raises ConfigError for a malformed step, and for a chain larger than
    ``limits.max_size`` characters as JSON (measured before anything is read) or a
    ``constant`` nested more than ``limits.max_depth`` levels. The returned transform
    raises PipelineError, naming the step, when a step fails on an event, among others
    when a template would render, or the chain's ``set`` steps copy, more than
    ``limits.max_render`` characters.
    """
    if steps is None:
        return None
    check_size(steps, limits, what="the transform", where=where)
    if isinstance(steps, Mapping | str | bytes) or not isinstance(steps, Sequence):
        raise ConfigError(f"expected a list of transform steps, got {describe(steps)}", key=where)
    compiled: list[tuple[str, Step]] = []
    for i, step in enumerate(steps):
        at = f"{where}[{i}]"
        if not isinstance(step, Mapping) or len(step) != 1:
            raise ConfigError(
                f"a transform step is a mapping naming one step kind ({_known()}), "
                f"got {describe(step)}"
                + (f" with {len(step)} keys" if isinstance(step, Mapping) else ""),
                key=at,
            )
        ((kind, body),) = step.items()
        compile_step = STEP_KINDS.get(kind) if isinstance(kind, str) else None
        if compile_step is None:
            raise ConfigError(f"unknown transform step {kind!r}; known: {_known()}", key=at)
        name = join_path(at, kind)
        fn = compile_step(body, name, limits)
        if fn is not None:
            compiled.append((name, fn))
    return _chain(compiled, limits.max_render) if compiled else None


def _chain(steps: list[tuple[str, Step]], max_render: int) -> Transform:
    if len(steps) == 1:
        ((name, step),) = steps

        def single(event: Event) -> Event | None:
            try:
                return step(event, _Budget(max_render))
            except Exception as exc:
                raise _failed(name, exc) from exc

        return single

    def chain(event: Event) -> Event | None:
        budget = _Budget(max_render)
        for name, step in steps:
            try:
                result = step(event, budget)
            except Exception as exc:
                raise _failed(name, exc) from exc
            if result is None:
                return None
            event = result
        return event

    return chain


def _failed(step: str, exc: Exception) -> PipelineError:
    return PipelineError(
        f"transform step {step} failed on an event: {type(exc).__name__}: {exc}", step=step
    )


# -- original, constant, template --------------------------------------------------------


def _json_depth(value: Any) -> int:
    """How deeply lists and mappings nest in ``value`` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            item = list(item.values())
        if isinstance(item, list | tuple):
            deepest = max(deepest, depth)
            stack.extend((member, depth + 1) for member in item)
    return deepest


def _compile_original(body: Any, path: str, limits: FilterLimits) -> None:
    if body is not None and body != {}:
        raise ConfigError(f"'original' takes no options ({{}}), got {describe(body)}", key=path)
    return None


def _compile_constant(body: Any, path: str, limits: FilterLimits) -> Step:
    check_depth(_json_depth(body), limits, what="the constant", where=path)
    if isinstance(body, str | bytes) or body is None:
        value = body
        return lambda event, budget: event.replace(data=value)
    try:
        encoded = _encoder.encode(body)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ConfigError(f"the constant is not a JSON value: {exc}", key=path) from None
    if not isinstance(body, dict | list | tuple):
        scalar = _decoder.decode(encoded)
        return lambda event, budget: event.replace(data=scalar)
    # A fresh copy for every event, so a handler that changes its data changes only its own.
    return lambda event, budget: event.replace(data=_decoder.decode(encoded))


def _compile_template(body: Any, path: str, limits: FilterLimits) -> Step:
    if not isinstance(body, Mapping) or "template" not in body:
        raise ConfigError(
            "expected {'template': '...${name}...', 'variables': {'name': '$.data.path'}}, "
            f"got {describe(body)}",
            key=path,
        )
    unknown = set(body) - {"template", "variables"}
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, sorted(map(str, unknown))))}; "
            "a template step takes 'template' and 'variables'",
            key=path,
        )
    text = body["template"]
    if not isinstance(text, str):
        raise ConfigError(
            f"expected a string, got {describe(text)}", key=join_path(path, "template")
        )
    variables = body.get("variables") or {}
    at = join_path(path, "variables")
    if not isinstance(variables, Mapping):
        raise ConfigError(
            f"expected a mapping of name to JSONPath, got {describe(variables)}", key=at
        )
    getters: dict[str, Callable[[Event], Any]] = {}
    for name, source in variables.items():
        if not isinstance(name, str) or not name or "}" in name:
            raise ConfigError(f"{name!r} is not a variable name", key=at)
        where = join_path(at, name)
        if isinstance(source, str) and source.startswith("$"):
            getters[name] = compile_event_path(source, where=where)
        elif source is None or isinstance(source, str | int | float | bool):
            getters[name] = _constant_variable(source)
        else:
            raise ConfigError(
                f"expected a JSONPath such as '$.data.id' or a constant, got {describe(source)}",
                key=where,
            )
    parts = _parse_template(text, getters, join_path(path, "template"))
    literal = [part for part in parts if isinstance(part, str)]
    if len(literal) == len(parts):  # no placeholders: the same text for every event
        return _compile_constant_text("".join(literal))
    # Each variable is rendered once per event however often it is used, and the sizes
    # are added up as each renders, before the next: a long value used a thousand times,
    # or a thousand variables of one long value, are an error of the step after one
    # value over, not a string of a thousand copies.
    index: dict[Callable[[Event], Any], int] = {}
    layout: list[str | int] = []
    for part in parts:
        layout.append(part if isinstance(part, str) else index.setdefault(part, len(index)))
    used = list(index)
    uses = [0] * len(used)
    for slot in layout:
        if not isinstance(slot, str):
            uses[slot] += 1
    renders = list(zip(used, uses, strict=True))
    fixed = sum(map(len, literal))
    max_render = limits.max_render

    def template(event: Event, budget: _Budget) -> Event:
        # A template replaces the data, so each one in a chain may render max_render:
        # the data it leaves is never larger than that (or than it was).
        left = max_render - fixed
        texts: list[str] = []
        for getter, count in renders:
            text = _text(getter(event), left // count)
            if text is None:
                raise _over_render(max_render)
            left -= len(text) * count
            texts.append(text)
        rendered = "".join([part if isinstance(part, str) else texts[part] for part in layout])
        return event.replace(data=_as_data(rendered, event))

    return template


def _over_render(max_render: int) -> ValueError:
    return ValueError(
        f"the template would render more than limits.filters.max_render ({max_render}) "
        "characters; render less, or raise the limit"
    )


def _constant_variable(value: Any) -> Callable[[Event], Any]:
    return lambda event: value


def _compile_constant_text(rendered: str) -> Step:
    # Text of the spec itself (at most limits.max_size): nothing to count.
    return lambda event, budget: event.replace(data=_as_data(rendered, event))


def _parse_template(
    text: str, getters: Mapping[str, Callable[[Event], Any]], path: str
) -> list[str | Callable[[Event], Any]]:
    parts: list[str | Callable[[Event], Any]] = []
    literal = ""
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        literal += text[pos : m.start()]
        pos = m.end()
        token = m.group(0)
        if token == "$${":
            literal += "${"
            continue
        name = m.group(1)
        if name is None:
            raise ConfigError(
                f"unclosed '${{' at column {m.start() + 1}; write '$${{' for a literal '${{'",
                key=path,
            )
        getter = getters.get(name)
        if getter is None:
            defined = ", ".join(getters) or "none"
            raise ConfigError(
                f"the template uses ${{{name}}}, which 'variables' does not define "
                f"(defined: {defined})",
                key=path,
            )
        if literal:
            parts.append(literal)
            literal = ""
        parts.append(getter)
    literal += text[pos:]
    if literal:
        parts.append(literal)
    return parts


def _text(value: Any, limit: int) -> str | None:
    """A variable's value as template text (strings as they are, the rest as JSON), or
    None when it is longer than ``limit`` characters.

    Strings and bytes are measured before anything is built; a structured value is
    glanced at first (a few long strings show), then encoded and measured.
    """
    if type(value) is str:
        return value if len(value) <= limit else None
    if value is MISSING or value is None:
        return "null" if limit >= 4 else None
    if isinstance(value, bytes | bytearray | memoryview):
        if (len(value) + 2) // 3 * 4 > limit:
            return None
        return base64.b64encode(value).decode("ascii")
    if json_size_exceeds(value, limit, most=_GLANCE):
        return None
    text = _encoder.encode(value).decode("utf-8")
    return text if len(text) <= limit else None


def _as_data(rendered: str, event: Event) -> Any:
    """The rendered text as data: decoded when the event says JSON and it parses, as
    deep as every binding reads (``MAX_DATA_DEPTH``), else the text itself."""
    if is_json_media_type(event.datacontenttype):
        try:
            value = _decoder.decode(rendered)
        except msgspec.DecodeError:
            return rendered
        except RecursionError:
            raise EventValidationError(
                f"the template rendered JSON nested far more than {MAX_DATA_DEPTH} deep, "
                "the most eventmesh reads; flatten it",
                attribute="data",
            ) from None
        check_data_depth(value, rendered)
        return value
    return rendered


# -- set, rename, remove -----------------------------------------------------------------


def _check_name(name: Any, path: str, *, verb: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{name!r} is not an attribute name: CloudEvents attribute names are lower-case "
            "letters and digits",
            key=path,
        )
    if name in _NOT_ATTRIBUTES:
        raise ConfigError(
            f"{name!r} is not an attribute; change the data with a 'constant', 'template' "
            "or 'call' step",
            key=path,
        )
    if name == "specversion":
        raise ConfigError("'specversion' is always '1.0' and cannot be changed", key=path)
    if verb != "set" and name in _REQUIRED:
        raise ConfigError(
            f"{name!r} is a required attribute and cannot be {verb}d; use 'set' to change "
            "its value",
            key=path,
        )
    return name


def _check_not_request(name: str, path: str, *, verb: str) -> None:
    if name in _REQUEST_ATTRIBUTES:
        raise ConfigError(
            f"a transform cannot {verb} {name!r}: it says where a handler's replies go, "
            "which only the event's publisher may choose (publishing it needs publish on "
            "that reply inbox)",
            key=path,
        )


def _coerce(name: str, value: Any) -> Any:
    """A value as attribute ``name`` holds it; None unsets. Raises ValueError/TypeError."""
    if value is None:
        if name in _REQUIRED:
            raise ValueError(f"the required attribute {name!r} cannot be unset")
        return None
    if name == "time":
        if isinstance(value, datetime):
            return value
        if isinstance(value, str):
            return parse_time(value)
        raise TypeError(f"'time' needs an RFC 3339 string, got {type(value).__name__}")
    kind = type(value)
    if kind is str:
        return value
    if isinstance(value, datetime):
        return rfc3339(value)
    if name not in CONTEXT_ATTRIBUTES and (kind is int or kind is bool):
        return value  # extensions hold integers and booleans as they are
    if kind is bool or kind is int or kind is float:
        return _encoder.encode(value).decode("utf-8")
    raise TypeError(f"attribute {name!r} needs a string, number or boolean, got {kind.__name__}")


_PROBE: Final = Event(type="probe", source="/probe", id="probe", time=None)


def _check_literal(name: str, value: Any, path: str) -> Any:
    """The literal as the attribute holds it, validated as the Event would."""
    try:
        value = _coerce(name, value)
        if name in CONTEXT_ATTRIBUTES:
            _PROBE.replace(**{name: value})
        elif value is not None:
            _PROBE.replace(extensions={name: value})
    except (ValueError, TypeError, EventValidationError) as exc:
        raise ConfigError(str(exc), key=path) from None
    return value


class _Changes:
    """Builds one ``replace`` call from attribute changes, copying extensions only if needed."""

    __slots__ = ("context", "event", "extensions")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.context: dict[str, Any] = {}
        self.extensions: dict[str, Any] | None = None

    def read(self, name: str) -> Any:
        if name in CONTEXT_ATTRIBUTES:
            return getattr(self.event, name)
        return self.event.extensions.get(name)

    def put(self, name: str, value: Any) -> None:
        if name in CONTEXT_ATTRIBUTES:
            self.context[name] = value
            return
        if self.extensions is None:
            self.extensions = dict(self.event.extensions)
        if value is None:
            self.extensions.pop(name, None)
        else:
            self.extensions[name] = value

    def apply(self) -> Event:
        if self.extensions is not None:
            self.context["extensions"] = self.extensions
        return self.event.replace(**self.context) if self.context else self.event


def _compile_set(body: Any, path: str, limits: FilterLimits) -> Step:
    if not isinstance(body, Mapping) or not body:
        raise ConfigError(
            f"expected a mapping of attribute to value or {{'from': '$.path'}}, "
            f"got {describe(body)}",
            key=path,
        )
    literals: list[tuple[str, Any]] = []
    reads: list[tuple[str, Callable[[Event], Any], Any]] = []
    for name, value in body.items():
        at = join_path(path, name)
        _check_name(name, path, verb="set")
        _check_not_request(name, at, verb="set")
        if isinstance(value, Mapping):
            unknown = set(value) - {"from", "default"}
            source = value.get("from")
            if unknown or not isinstance(source, str):
                raise ConfigError(
                    "expected {'from': '$.path'} with an optional 'default', "
                    f"got {describe(value)}",
                    key=at,
                )
            get = compile_event_path(source, where=join_path(at, "from"))
            default = value.get("default")
            if default is not None:
                default = _check_literal(name, default, join_path(at, "default"))
            reads.append((name, get, default))
        elif isinstance(value, list):
            raise ConfigError(f"an attribute holds one value, got {describe(value)}", key=at)
        else:
            literals.append((name, _check_literal(name, value, at)))

    def set_(event: Event, budget: _Budget) -> Event:
        changes = _Changes(event)
        for name, value in literals:
            changes.put(name, value)
        for name, get, default in reads:
            found = get(event)
            if found is MISSING or found is None:
                found = default
            value = _coerce(name, found)
            if type(value) is str:  # a copy of the event's text: it counts as added
                if len(value) > budget.left:
                    raise _over_copy(name, len(value), budget)
                budget.left -= len(value)
            changes.put(name, value)
        return changes.apply()

    return set_


def _over_copy(name: str, size: int, budget: _Budget) -> ValueError:
    return ValueError(
        f"setting {name!r} would copy {size} characters, more than the {budget.left} left "
        f"of limits.filters.max_render ({budget.limit}), what one transform may add to an "
        "event; copy a smaller value, or raise the limit"
    )


def _compile_rename(body: Any, path: str, limits: FilterLimits) -> Step:
    if not isinstance(body, Mapping) or not body:
        raise ConfigError(
            f"expected a mapping of old name to new name, got {describe(body)}", key=path
        )
    pairs: list[tuple[str, str]] = []
    targets: set[str] = set()
    for old, new in body.items():
        _check_name(old, path, verb="rename")
        at = join_path(path, old)
        _check_name(new, at, verb="rename")
        _check_not_request(new, at, verb="rename an attribute to")
        if new == old:
            raise ConfigError(f"{old!r} is renamed to itself", key=at)
        if new in targets:
            raise ConfigError(f"two attributes are renamed to {new!r}", key=at)
        targets.add(new)
        pairs.append((old, new))

    def rename(event: Event, budget: _Budget) -> Event:
        changes = _Changes(event)
        moved = [(new, changes.read(old)) for old, new in pairs]
        for (old, _), (_, value) in zip(pairs, moved, strict=True):
            if value is not None:
                changes.put(old, None)
        for new, value in moved:
            if value is not None:
                changes.put(new, _coerce(new, value))
        return changes.apply()

    return rename


def _compile_remove(body: Any, path: str, limits: FilterLimits) -> Step:
    if isinstance(body, str):
        body = [body]
    if not isinstance(body, Sequence) or not body:
        raise ConfigError(f"expected a list of attribute names, got {describe(body)}", key=path)
    names = [_check_name(name, f"{path}[{i}]", verb="remove") for i, name in enumerate(body)]

    def remove(event: Event, budget: _Budget) -> Event:
        changes = _Changes(event)
        for name in names:
            if changes.read(name) is not None:
                changes.put(name, None)
        return changes.apply()

    return remove


# -- call --------------------------------------------------------------------------------


def _compile_call(body: Any, path: str, limits: FilterLimits) -> Step:
    if not isinstance(body, str):
        raise ConfigError(f"expected 'package.module:function', got {describe(body)}", key=path)
    fn = import_callable(body, where=path)
    if inspect.iscoroutinefunction(fn):
        raise ConfigError(
            f"{body!r} is an async function; transforms are synchronous (do async work in "
            "the handler)",
            key=path,
        )

    def call(event: Event, budget: _Budget) -> Event | None:
        result = fn(event)
        if result is None or isinstance(result, Event):
            return result
        raise TypeError(f"{body} returned {type(result).__name__}, not an Event or None")

    return call


STEP_KINDS: Final[Mapping[str, _Compiler]] = {
    "call": _compile_call,
    "constant": _compile_constant,
    "original": _compile_original,
    "remove": _compile_remove,
    "rename": _compile_rename,
    "set": _compile_set,
    "template": _compile_template,
}
"""The step kinds :func:`compile_transforms` knows, each with its compile function
(taking the body, its path and the limits)."""


def _known() -> str:
    return ", ".join(STEP_KINDS)
