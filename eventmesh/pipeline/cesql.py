"""CloudEvents SQL (CESQL) v1.0: compile an expression once, evaluate it on many events.

:func:`compile` returns an :class:`Expression`; :meth:`Expression.evaluate` gives a
:class:`Result` (a value and the errors met, never an exception) and
:meth:`Expression.matches` is the filter view. See docs/filters.md, 'CloudEvents SQL',
for the language, 'Errors are values' for what each error yields, and 'Decisions
behind the implementation' for why it is built as it is.

Design: the AST is turned into closures and dropped, so evaluating is one call of the
root closure. Errors are the rare path: a closure that meets one raises the internal
``Failed`` carrying the value and the errors, and its parent applies the spec's rules;
Python 3.11's ``try`` is free until something is raised.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from eventmesh.event import format_time
from eventmesh.pipeline._cesql_functions import (
    ANY,
    BUILTINS,
    INT32_MAX,
    INT32_MIN,
    LOGIC,
    ZERO,
    ErrorKind,
    EvaluationError,
    Failed,
    Fn,
    Value,
    arithmetic,
    binary,
    cast,
    cast_then,
    gather,
    like_matcher,
    poisoned,
    resolve,
    to_string,
)
from eventmesh.pipeline._cesql_parser import (
    Attribute,
    Binary,
    Call,
    Exists,
    In,
    Like,
    Literal,
    Node,
    ParseError,
    Unary,
    children,
    parse,
)
from eventmesh.pipeline.limits import DEFAULT_LIMITS, LINEAR_FROM, FilterLimits, search_cost

if TYPE_CHECKING:
    from eventmesh.event import Event

__all__ = ["ErrorKind", "EvaluationError", "Expression", "ParseError", "Result", "Value", "compile"]

logger = logging.getLogger(__name__)

# Defined privately, presented here: tracebacks and reprs name the public module.
ParseError.__module__ = EvaluationError.__module__ = __name__

_NO_EVENT: Final[Any] = None
_EQUALITY: Final = {"=": operator.eq, "!=": operator.ne, "<>": operator.ne}
_ORDERING: Final = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_FAST_ARITHMETIC: Final = {"+": operator.add, "-": operator.sub, "*": operator.mul}


@dataclass(frozen=True, slots=True)
class Result:
    """What an evaluation yields: the value, and the errors met on the way (often none)."""

    value: Value
    errors: tuple[EvaluationError, ...] = ()


class Expression:
    """A compiled CESQL expression; immutable, safe to share between tasks and threads."""

    __slots__ = ("_fn", "source")

    def __init__(self, source: str, fn: Fn) -> None:
        self.source = source
        self._fn = fn

    def evaluate(self, event: Event) -> Result:
        """The value and the errors of this expression on ``event``; never raises."""
        try:
            return Result(self._fn(event))
        except Failed as failed:
            return Result(failed.value, failed.errors)
        except Exception as exc:  # a bug here must not take the pipeline down
            logger.warning("CESQL expression %r failed on an event", self.source, exc_info=True)
            return Result(False, (EvaluationError("generic", f"unexpected {exc!r}"),))

    def matches(self, event: Event) -> bool:
        """True only when the expression is ``true`` on ``event`` and met no error."""
        try:
            return self._fn(event) is True
        except Failed:
            return False
        except Exception:
            logger.warning("CESQL expression %r failed on an event", self.source, exc_info=True)
            return False

    def __repr__(self) -> str:
        return f"cesql.compile({self.source!r})"


def compile(  # shadows the builtin on purpose: used as cesql.compile
    source: str, *, limits: FilterLimits = DEFAULT_LIMITS
) -> Expression:
    """Compile a CESQL expression; raises :class:`ParseError` when it is not valid.

    An expression longer than ``limits.max_size`` characters, or nesting deeper than
    ``limits.max_depth``, is a ParseError too; the length is checked before parsing.
    """
    if len(source) > limits.max_size:
        raise ParseError(
            source,
            0,
            f"the expression is {len(source)} characters, more than {limits.max_size} "
            "(limits.filters.max_size); split it across subscriptions, or raise the limit",
        )
    try:
        tree = parse(source, limits.max_depth)
        code = _Compiler(source, limits, tree).compile(tree)
    except RecursionError:
        raise ParseError(source, 0, "the expression nests too deeply") from None
    return Expression(source, code.fn)


# -- the compiler ---------------------------------------------------------------------


class _Code(NamedTuple):
    fn: Fn
    constant: bool = False
    # For a plain attribute read: its name and the error when it is missing, so that a
    # comparison or LIKE on it can read the event itself and save a call per evaluation.
    attribute: str | None = None
    missing: tuple[EvaluationError, ...] = ()


def _constant(value: Value) -> _Code:
    def constant(event: Any) -> Value:
        return value

    return _Code(constant, constant=True)


def _constant_failure(value: Value, errors: tuple[EvaluationError, ...]) -> _Code:
    """A constant sub-expression that fails: the same value and errors on every event,
    found once. Not ``constant``: an operator above it must not fold it as a value."""

    def failing(event: Any) -> Value:
        raise Failed(value, errors)  # a new one each time: a raised one keeps its frames

    return _Code(failing)


def _rfc3339(value: Any) -> str:
    if not isinstance(value, datetime):
        return to_string(value)
    return format_time(value)  # as the JSON format writes it, nanoseconds included


_BUILDERS: Final = frozenset(
    {"CONCAT", "CONCAT_WS", "LEFT", "LOWER", "RIGHT", "SUBSTRING", "TRIM", "UPPER"}
)
"""The functions that build a new string from their String arguments."""


def _scanners(root: Node) -> int:
    """How many LIKEs and string-building calls the tree holds (walked without recursion)."""
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        if isinstance(node, Like) or (isinstance(node, Call) and node.name in _BUILDERS):
            count += 1
        stack.extend(children(node))
    return count


class _Compiler:
    def __init__(self, source: str, limits: FilterLimits, tree: Node) -> None:
        self.source = source
        self.max_string = limits.max_string
        # What each LIKE or string function may read per evaluation: their shares of
        # max_scan, so that all of them together read at most max_scan characters.
        self.allowance = min(limits.max_string, limits.max_scan // max(1, _scanners(tree)))

    def where(self, node: Node) -> str:
        text = self.source[node.start : node.end]
        if len(text) > 60:
            text = text[:57] + "..."
        column = node.start - self.source.rfind("\n", 0, node.start)
        return f" in `{text}` (column {column})"

    def compile(self, node: Node) -> _Code:
        if isinstance(node, Literal):
            return _constant(node.value)
        if isinstance(node, Attribute):
            return self.attribute(node)
        if isinstance(node, Exists):
            name = node.name

            def exists(event: Any) -> Value:
                return event.get(name) is not None

            return _Code(exists)
        children: list[_Code] = []
        code = self.compound(node, children)
        if all(child.constant for child in children):
            try:
                return _constant(code.fn(_NO_EVENT))
            except Failed as failed:  # reported on every evaluation, but computed once
                return _constant_failure(failed.value, failed.errors)
        return code

    def compound(self, node: Node, children: list[_Code]) -> _Code:
        if isinstance(node, Unary):
            children.append(self.compile(node.operand))
            return self.unary(node, children[0])
        if isinstance(node, Binary):
            children += (self.compile(node.left), self.compile(node.right))
            return self.binary(node, *children)
        if isinstance(node, Like):
            children.append(self.compile(node.operand))
            return self.like(node, children[0])
        if isinstance(node, In):
            children += [self.compile(item) for item in (node.operand, *node.items)]
            return self.membership(node, children[0], children[1:])
        assert isinstance(node, Call)
        children += [self.compile(arg) for arg in node.args]
        return self.call(node, children)

    def attribute(self, node: Attribute) -> _Code:
        name = node.name
        missing = (
            EvaluationError(
                "missingAttribute", f"the event has no attribute {name!r}{self.where(node)}"
            ),
        )
        if name == "time":  # a datetime: CESQL sees its RFC 3339 string, as in JSON

            def read_time(event: Any) -> Value:
                value = event.get("time")
                if value is None:
                    raise Failed(False, missing)
                return _rfc3339(value)

            return _Code(read_time)

        def read(event: Any) -> Value:
            value: Value | None = event.get(name)
            if value is None:
                raise Failed(False, missing)
            return value

        return _Code(read, False, name, missing)

    def unary(self, node: Unary, operand: _Code) -> _Code:
        of, where = operand.fn, self.where(node)
        if node.op == "NOT":

            def not_(event: Any) -> Value:
                try:
                    value = of(event)
                except Failed as failed:
                    raise Failed(False, failed.errors) from None
                if value is True or value is False:
                    return not value
                errors: list[EvaluationError] = []
                result = not cast(value, bool, errors, where)
                if errors:
                    raise Failed(result, tuple(errors))
                return result

            return _Code(not_)

        def negate(event: Any) -> Value:
            try:
                value = of(event)
            except Failed as failed:
                raise Failed(0, failed.errors) from None
            if type(value) is int and value != INT32_MIN:
                return -value
            return arithmetic("-", 0, value, where)

        return _Code(negate)

    def binary(self, node: Binary, left: _Code, right: _Code) -> _Code:
        op, where = node.op, self.where(node)
        lf, rf = left.fn, right.fn
        if op in ("AND", "OR", "XOR"):
            return _Code(LOGIC[op](lf, rf, where))
        if op in _EQUALITY or op in _ORDERING:
            compare: Callable[[Any, Any], bool] = _EQUALITY.get(op) or _ORDERING[op]
            ordering = op in _ORDERING

            def apply(a: Value, b: Value) -> Value:
                if ordering:
                    if type(a) is int and type(b) is int:
                        return compare(a, b)
                    return cast_then(compare, a, b, int, where)
                if type(a) is type(b):
                    return compare(a, b)
                # ambiguous operator: the right operand's type decides (v1.0 section 3.7)
                return cast_then(compare, a, b, type(b), where)

            name, missing = left.attribute, left.missing
            if name is None or not right.constant:
                return _Code(binary(lf, rf, False, apply, constant_right=right.constant))
            b = right.fn(_NO_EVENT)
            # the fast path needs a and b of one type, and Integers for an ordering
            fast_type = type(b) if not ordering or type(b) is int else type(None)

            def attribute_vs_constant(event: Any) -> Value:  # the common filter shape
                a = event.get(name)
                if a is None:
                    raise Failed(False, missing)
                if type(a) is fast_type:
                    return compare(a, b)
                return apply(a, b)

            return _Code(attribute_vs_constant)
        fast = _FAST_ARITHMETIC.get(op)

        def apply_arithmetic(a: Value, b: Value) -> Value:
            if fast is not None and type(a) is int and type(b) is int:
                result = fast(a, b)
                if INT32_MIN <= result <= INT32_MAX:
                    return result  # type: ignore[no-any-return]
            return arithmetic(op, a, b, where)

        return _Code(binary(lf, rf, 0, apply_arithmetic, constant_right=right.constant))

    def like(self, node: Like, operand: _Code) -> _Code:
        of, negated = operand.fn, node.negated
        match, weight, linear = like_matcher(node.pattern)
        allowance = self.allowance
        # A value longer than this would cost more than this LIKE's share of max_scan,
        # but for one str.find, which search_cost charges less from LINEAR_FROM on.
        longest = allowance // weight if weight else None
        linear_too = linear and allowance >= LINEAR_FROM
        too_long = (
            EvaluationError(
                "generic",
                f"LIKE reads at most {longest} characters here"
                + (f" (or from {LINEAR_FROM} to {allowance})" if linear_too else "")
                + " (limits.filters.max_scan, shared by the expression's LIKEs and string "
                f"functions){self.where(node)}",
            ),
        )
        name, missing = operand.attribute, operand.missing

        def like(event: Any) -> Value:
            if name is not None:
                value = event.get(name)
                if value is None:
                    raise Failed(False, missing)
            else:
                try:
                    value = of(event)
                except Failed as failed:
                    raise Failed(False, failed.errors) from None
            if type(value) is not str:
                value = to_string(value)
            if (
                longest is not None
                and (size := len(value)) > longest
                and (not linear or search_cost(size, weight) > allowance)
            ):
                raise Failed(False, too_long)
            return match(value) is not negated

        return _Code(like)

    def membership(self, node: In, operand: _Code, items: list[_Code]) -> _Code:
        of, negated, where = operand.fn, node.negated, self.where(node)
        item_fns = tuple(item.fn for item in items)
        lookup: dict[type, frozenset[Value]] = {}
        if all(item.constant for item in items):  # one set per operand type, cast in advance
            values = [fn(_NO_EVENT) for fn in item_fns]
            for target in (bool, int, str):
                errors: list[EvaluationError] = []
                cast_values = frozenset(cast(v, target, errors, where) for v in values)
                if not errors:
                    lookup[target] = cast_values

        def member(event: Any) -> Value:
            try:
                x = of(event)
            except Failed as failed:
                raise poisoned(False, failed.errors, event, *item_fns) from None
            known = lookup.get(type(x))
            if known is not None:
                return (x in known) is not negated
            errors: list[EvaluationError] = []
            item_failed = False
            found = False
            for fn in item_fns:  # the left operand's type is the target (v1.0 section 3.7)
                try:
                    y = fn(event)
                except Failed as failed:
                    gather(errors, failed.errors)
                    item_failed = True
                    continue
                matched = cast(y, type(x), errors, where) == x
                found = found or matched
            if item_failed:
                raise Failed(False, tuple(errors))
            if errors:
                raise Failed(found is not negated, tuple(errors))
            return found is not negated

        return _Code(member)

    def call(self, node: Call, args: list[_Code]) -> _Code:
        where, function = self.where(node), resolve(node.name, len(args))
        if function is None:
            if node.name in BUILTINS:
                arities = sorted(
                    f"{len(f.params)} or more" if f.variadic else str(len(f.params))
                    for f in BUILTINS[node.name]
                )
                problem = f"{node.name} takes {' or '.join(arities)} arguments, not {len(args)}"
            else:
                problem = f"there is no function {node.name} (misspelled?)"
            missing = (EvaluationError("missingFunction", problem + where),)

            def missing_function(event: Any) -> Value:
                raise Failed(False, missing)

            return _Code(missing_function)
        arg_fns = tuple(arg.fn for arg in args)
        params = function.params + (function.variadic or ANY,) * (len(args) - len(function.params))
        targets = tuple(enumerate(params))
        impl, zero = function.impl, ZERO[function.returns]
        name, allowance, max_string = node.name, self.allowance, self.max_string
        builds = name in _BUILDERS
        # CONCAT_WS reads its separator once and writes it between every two arguments.
        separated = name == "CONCAT_WS"

        def call(event: Any) -> Value:
            values: list[Any] = []
            failures: list[EvaluationError] | None = None
            for fn in arg_fns:
                try:
                    values.append(fn(event))
                except Failed as failed:
                    if failures is None:
                        failures = []
                    gather(failures, failed.errors)
            if failures:
                raise Failed(zero, tuple(failures))
            errors: list[EvaluationError] = []
            for index, target in targets:
                if target is not ANY and type(values[index]) is not target:
                    values[index] = cast(values[index], target, errors, where)
            if builds:  # never build a string over max_string, nor read more than a share
                # what it reads, and for CONCAT and CONCAT_WS exactly what it would build
                size = sum(len(v) for v in values if type(v) is str)
                if separated and len(values) > 3:
                    size += len(values[0]) * (len(values) - 3)
                if size > allowance:
                    raise Failed(zero, (*errors, _too_long(name, size, allowance, where)))
            try:
                value = impl(*values)
            except Failed as failed:
                located = tuple(EvaluationError(e.kind, e.message + where) for e in failed.errors)
                raise Failed(failed.value, (*errors, *located)) from None
            # The other builders write at most what they read, but UPPER and LOWER: at
            # most three characters for one (UPPER('ß') is 'SS'), so 3 x allowance.
            if builds and len(value) > max_string:  # type: ignore[arg-type]
                too_long = _too_long(name, len(value), max_string, where)  # type: ignore[arg-type]
                raise Failed(zero, (*errors, too_long))
            if errors:
                raise Failed(value, tuple(errors))
            return value

        return _Code(call)


def _too_long(name: str, size: int, limit: int, where: str) -> EvaluationError:
    return EvaluationError(
        "functionEvaluation",
        f"{name} would read or build {size} characters, more than the {limit} it may here "
        "(limits.filters.max_string, and a share of limits.filters.max_scan)" + where,
    )
