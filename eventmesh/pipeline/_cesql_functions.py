"""CESQL values, casts, the error value, the operators' closures and the built-in functions.

Values are Python ``str``, ``int`` (always within 32 bits) and ``bool``. Because
``bool`` is a subclass of ``int`` in Python, every type test here is ``type(x) is T``,
never ``isinstance``.

Only :mod:`eventmesh.pipeline.cesql` uses this module.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from eventmesh.pipeline.limits import search_weight

__all__ = [
    "ANY",
    "BUILTINS",
    "INT32_MAX",
    "INT32_MIN",
    "LOGIC",
    "MAX_ERRORS",
    "ZERO",
    "ErrorKind",
    "EvaluationError",
    "Failed",
    "Fn",
    "Function",
    "Value",
    "arithmetic",
    "binary",
    "cast",
    "cast_then",
    "gather",
    "like_matcher",
    "poisoned",
    "resolve",
    "to_bool",
    "to_string",
]

Value: TypeAlias = bool | int | str
ValueType: TypeAlias = type[bool] | type[int] | type[str]
ErrorKind: TypeAlias = Literal[
    "parse", "math", "cast", "missingFunction", "functionEvaluation", "missingAttribute", "generic"
]

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
ZERO: Final[dict[type, Value]] = {bool: False, int: 0, str: ""}
"""The zero value of each CESQL type (v1.0 section 3.1)."""
MAX_ERRORS: Final = 100
"""The most errors one evaluation reports; the rest are dropped (the value is the same)."""
_TYPE_NAMES: Final[dict[type, str]] = {bool: "Boolean", int: "Integer", str: "String"}
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_LONGEST_INTEGER: Final = 64
# Characters with the Unicode White_Space property; str.strip() would also take the
# ASCII separators U+001C..U+001F, which are control characters TRIM must keep.
_WHITESPACE: Final = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


@dataclass(frozen=True, slots=True)
class EvaluationError:
    """One error met while evaluating an expression; a value, reported, never raised.

    ``kind`` is the CESQL error type (``"math"``, ``"cast"``, ``"missingAttribute"``,
    ``"missingFunction"``, ``"functionEvaluation"`` or ``"generic"``) and ``message``
    says what went wrong and quotes the sub-expression.
    """

    kind: ErrorKind
    message: str


class Failed(Exception):
    """Internal: a sub-expression met errors; ``value`` is what it evaluates to anyway.

    It keeps at most :data:`MAX_ERRORS` of them: thousands of failing operands would
    otherwise make every operator above them copy thousands of errors.
    """

    def __init__(self, value: Value, errors: tuple[EvaluationError, ...]) -> None:
        self.value = value
        self.errors = errors if len(errors) <= MAX_ERRORS else errors[:MAX_ERRORS]


def gather(errors: list[EvaluationError], more: tuple[EvaluationError, ...]) -> None:
    """Append ``more`` to ``errors``, up to :data:`MAX_ERRORS` in all.

    Operators with many operands collect their errors with this, in a list: joining
    tuples would copy the errors met so far once per failing operand.
    """
    room = MAX_ERRORS - len(errors)
    if room > 0:
        errors.extend(more[:room] if len(more) > room else more)


def _show(value: Value) -> str:
    if type(value) is bool:
        return "TRUE" if value else "FALSE"
    if type(value) is str and len(value) > 40:
        return repr(value[:37] + "...")
    return repr(value)


# -- casts (v1.0 section 3.7) ---------------------------------------------------------


def to_string(value: Value) -> str:
    """The String form of any value; this cast never fails."""
    if type(value) is bool:
        return "true" if value else "false"
    return value if type(value) is str else str(value)


def parse_int(text: str) -> int | None:
    """A base-10 32-bit integer with an optional sign, or None.

    A String longer than 64 characters is never one (it would need over 50 leading
    zeros): refusing it at once keeps a cast of a long attribute from reading it all.
    """
    if len(text) > _LONGEST_INTEGER or not _INTEGER.match(text):
        return None
    number = int(text)
    return number if INT32_MIN <= number <= INT32_MAX else None


def cast(
    value: Value,
    target: ValueType,
    errors: list[EvaluationError],
    where: str,
    *,
    explicit: bool = False,
) -> Value:
    """``value`` as ``target``; a failed cast appends a cast error and gives the zero value.

    Integer to Boolean is only done by the explicit ``BOOL()``: an implicit one (``NOT 10``)
    is a cast error, as the CESQL TCK requires.
    """
    kind = type(value)
    if kind is target:
        return value
    if target is str:
        return to_string(value)
    if target is int:
        if kind is bool:
            return int(value)
        number = parse_int(value)  # type: ignore[arg-type]  # kind is str here
        if number is not None:
            return number
    elif kind is str:
        if 4 <= len(value) <= 5:  # type: ignore[arg-type]  # no lower() of a long string
            lowered = value.lower()  # type: ignore[union-attr]
            if lowered == "true" or lowered == "false":
                return lowered == "true"
    elif explicit:
        return value != 0
    hint = "; use BOOL(x) to test an integer" if kind is int and not explicit else ""
    errors.append(
        EvaluationError(
            "cast",
            f"cannot cast {_TYPE_NAMES[kind]} {_show(value)} to {_TYPE_NAMES[target]}{hint}{where}",
        )
    )
    return ZERO[target]


# -- arithmetic -----------------------------------------------------------------------

_ARITHMETIC: Final[dict[str, Callable[[int, int], int]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}


def arithmetic(op: str, left: Value, right: Value, where: str) -> int:
    """``left op right`` on Integers, casting the operands; raises Failed on errors.

    Division truncates toward zero and the remainder takes the dividend's sign. Division
    by zero and a result outside 32 bits are math errors with the value 0.
    """
    errors: list[EvaluationError] = []
    a = cast(left, int, errors, where)
    b = cast(right, int, errors, where)
    assert type(a) is int
    assert type(b) is int
    result = 0
    if op in _ARITHMETIC:
        result = _ARITHMETIC[op](a, b)
    elif b == 0:
        errors.append(EvaluationError("math", f"division by zero{where}"))
    else:
        quotient = abs(a) // abs(b)
        if (a < 0) != (b < 0):
            quotient = -quotient
        result = quotient if op == "/" else a - b * quotient
    if not INT32_MIN <= result <= INT32_MAX:
        errors.append(EvaluationError("math", f"the result {result} overflows 32 bits{where}"))
        result = 0
    if errors:
        raise Failed(result, tuple(errors))
    return result


# -- LIKE -----------------------------------------------------------------------------

_LIKE_TOKEN = re.compile(r"\\[%_\\]|.", re.DOTALL)


def like_matcher(pattern: str) -> tuple[Callable[[str], bool], int, bool]:
    """A predicate for ``x LIKE pattern``, built once, the work it does per character, and
    whether that work is one ``str.find``'s (so once per character from
    :data:`~eventmesh.pipeline.limits.LINEAR_FROM` characters on).

    ``%`` is any run of characters, ``_`` one character; ``\\%``, ``\\_`` and ``\\\\``
    stand for ``%``, ``_`` and a backslash; any other backslash is itself.

    Matching never backtracks. The pattern is split at each ``%`` into runs; the first
    and the last are anchored at the ends, and each run between them is placed at its
    leftmost fit after the one before (one ``str.find``, or for a run with ``_`` between
    literal characters a fixed-length regex search), which is optimal because a run has a
    fixed length. The second value is the work per character of the value: 0 when the
    work depends on the pattern only (``'abc'``, ``'ab%'``, ``'%bc'``, ``'a%c'``), the
    :func:`~eventmesh.pipeline.limits.search_weight` of the longest run that
    ``str.find`` looks for (1 for a run under 8 characters), or the longest run with
    inner ``_`` when that is more (a search that may compare that many characters at
    each position).
    """
    # The pattern, split at each unescaped %, into runs of literals and "_" wildcards.
    runs: list[list[str | None]] = [[]]  # None marks "_"
    for token in _LIKE_TOKEN.findall(pattern):
        if token == "%":
            runs.append([])
        else:
            runs[-1].append(None if token == "_" else token[-1])
    if all(None not in run for run in runs):
        texts = ["".join(run) for run in runs]  # type: ignore[arg-type]
        if len(texts) == 1:
            return texts[0].__eq__, 0, False
        first, last = texts[0], texts[-1]
        if len(texts) == 2 and not last:
            return (lambda s: s.startswith(first)), 0, False
        if len(texts) == 2 and not first:
            return (lambda s: s.endswith(last)), 0, False
        if len(texts) == 3 and not first and not last:
            middle = texts[1]
            return (lambda s: middle in s), search_weight(len(middle)), True
    return _general_matcher(runs)


def _run_regex(run: list[str | None]) -> re.Pattern[str]:
    return re.compile("".join("." if c is None else re.escape(c) for c in run), re.DOTALL)


class _Middle(NamedTuple):
    """A run between two ``%``: ``lead`` and ``trail`` wildcards around a core that
    starts and ends with a literal character (``_`` next to ``%`` only shifts it)."""

    lead: int
    text: str | None  # the core when it has no "_": found with str.find
    regex: re.Pattern[str] | None  # otherwise
    size: int
    trail: int


def _middle(run: list[str | None]) -> _Middle:
    lead = 0
    while lead < len(run) and run[lead] is None:
        lead += 1
    trail = 0
    while trail < len(run) - lead and run[len(run) - 1 - trail] is None:
        trail += 1
    core = run[lead : len(run) - trail]
    if None in core:
        return _Middle(lead, None, _run_regex(core), len(core), trail)
    return _Middle(lead, "".join(core), None, len(core), trail)  # type: ignore[arg-type]


def _general_matcher(runs: list[list[str | None]]) -> tuple[Callable[[str], bool], int, bool]:
    if len(runs) == 1:
        whole, size = _run_regex(runs[0]), len(runs[0])
        return (lambda s: len(s) == size and whole.match(s) is not None), 0, False
    head, *inner, tail = runs
    head_re, tail_re = _run_regex(head), _run_regex(tail)
    middles = tuple(_middle(run) for run in inner if run)
    min_length = sum(len(run) for run in runs)
    head_length, tail_length = len(head), len(tail)
    weight = max(
        (m.size if m.regex is not None else search_weight(m.size) for m in middles), default=0
    )

    def match(s: str) -> bool:
        if len(s) < min_length or head_re.match(s) is None:
            return False
        end = len(s) - tail_length
        if tail_re.match(s, end) is None:
            return False
        position = head_length
        for lead, text, regex, size, trail in middles:
            if text is not None:
                found = s.find(text, position + lead, end - trail)
            else:
                assert regex is not None
                hit = regex.search(s, position + lead, end - trail)
                found = -1 if hit is None else hit.start()
            if found < 0:
                return False
            position = found + size + trail
        return True

    return match, weight, False


# -- operators: closures over the compiled operands --------------------------------
# Each closure takes an event and returns a value, or raises Failed (see cesql's
# docstring for which value comes with which error).

Fn: TypeAlias = Callable[[Any], Value]
"""A compiled sub-expression: takes an Event (constants also take None)."""


def poisoned(zero: Value, errors: tuple[EvaluationError, ...], event: Any, *rest: Fn) -> Failed:
    """An operator whose operand failed yields ``zero``; the other operands still run."""
    gathered = list(errors)
    for fn in rest:
        try:
            fn(event)
        except Failed as failed:
            gather(gathered, failed.errors)
    return Failed(zero, tuple(gathered))


def to_bool(value: Value, where: str) -> bool:
    errors: list[EvaluationError] = []
    result = cast(value, bool, errors, where)
    if errors:
        raise Failed(result, tuple(errors))
    return result  # type: ignore[return-value]


def cast_then(
    apply: Callable[[Any, Any], Value], a: Value, b: Value, target: type, where: str
) -> Value:
    """``apply`` on the operands cast to ``target``; a failed cast is reported, not fatal."""
    errors: list[EvaluationError] = []
    value = apply(cast(a, target, errors, where), cast(b, target, errors, where))
    if errors:
        raise Failed(value, tuple(errors))
    return value


def binary(
    lf: Fn, rf: Fn, zero: Value, apply: Callable[[Value, Value], Value], *, constant_right: bool
) -> Fn:
    """The closure of a binary operator; a constant right operand is captured by value."""
    if constant_right:
        b = rf(None)

        def with_constant(event: Any) -> Value:
            try:
                a = lf(event)
            except Failed as failed:
                raise Failed(zero, failed.errors) from None
            return apply(a, b)

        return with_constant

    def binary(event: Any) -> Value:
        try:
            a = lf(event)
        except Failed as failed:
            raise poisoned(zero, failed.errors, event, rf) from None
        try:
            b = rf(event)
        except Failed as failed:
            raise Failed(zero, failed.errors) from None
        return apply(a, b)

    return binary


def _and(lf: Fn, rf: Fn, where: str) -> Fn:
    def and_(event: Any) -> Value:
        try:
            a = lf(event)
        except Failed as failed:
            raise Failed(False, failed.errors) from None
        if a is not True and (a is False or to_bool(a, where) is False):
            return False  # short circuit; a failed cast raised above with the value false
        try:
            b = rf(event)
        except Failed as failed:
            raise Failed(False, failed.errors) from None
        return b if b is True or b is False else to_bool(b, where)

    return and_


def _or(lf: Fn, rf: Fn, where: str) -> Fn:
    def or_(event: Any) -> Value:
        try:
            a = lf(event)
        except Failed as failed:
            raise poisoned(False, failed.errors, event, rf) from None
        errors: tuple[EvaluationError, ...] = ()
        if a is not True and a is not False:
            try:
                a = to_bool(a, where)
            except Failed as failed:  # a failed cast makes the left false: go on
                errors = failed.errors
        if a is True:
            return True
        try:
            b = rf(event)
            if b is not True and b is not False:
                b = to_bool(b, where)
        except Failed as failed:
            raise Failed(False, errors + failed.errors) from None
        if errors:
            raise Failed(b, errors)
        return b

    return or_


def _xor(lf: Fn, rf: Fn, where: str) -> Fn:
    def xor(a: Value, b: Value) -> Value:
        if (a is True or a is False) and (b is True or b is False):
            return a is not b
        return cast_then(operator.is_not, a, b, bool, where)

    return binary(lf, rf, False, xor, constant_right=False)


LOGIC: Final[dict[str, Callable[[Fn, Fn, str], Fn]]] = {"AND": _and, "OR": _or, "XOR": _xor}


# -- functions (v1.0 section 3.5, plus the casting functions the TCK uses) -------------

ANY: Final = object
"""A parameter type that accepts every value without casting."""


@dataclass(frozen=True, slots=True)
class Function:
    """A built-in: fixed parameter types, an optional variadic tail type, the return type.

    ``impl`` takes the cast arguments and returns a value, or raises :class:`Failed` with
    the value and error the spec prescribes (LEFT with a negative length, ABS overflow).
    """

    name: str
    params: tuple[type, ...]
    variadic: type | None
    returns: ValueType
    impl: Callable[..., Value]


def _function_error(value: Value, kind: ErrorKind, message: str) -> Failed:
    return Failed(value, (EvaluationError(kind, message),))


def _left(x: str, y: int) -> str:
    if y < 0:
        raise _function_error(x, "functionEvaluation", f"LEFT needs a length >= 0, got {y}")
    return x[:y]


def _right(x: str, y: int) -> str:
    if y < 0:
        raise _function_error(x, "functionEvaluation", f"RIGHT needs a length >= 0, got {y}")
    return x[len(x) - y :] if y < len(x) else x


def _substring(x: str, pos: int, length: int | None = None) -> str:
    if pos > len(x) or pos < -len(x):
        raise _function_error(
            "",
            "functionEvaluation",
            f"SUBSTRING position {pos} is outside the string of length {len(x)}",
        )
    if length is not None and length < 0:
        raise _function_error("", "functionEvaluation", f"SUBSTRING length {length} is negative")
    if pos == 0:
        return ""
    start = pos - 1 if pos > 0 else len(x) + pos
    return x[start:] if length is None else x[start : start + length]


def _abs(x: int) -> int:
    if x == INT32_MIN:
        raise _function_error(INT32_MAX, "math", f"ABS({x}) overflows 32 bits")
    return abs(x)


def _explicit_cast(target: ValueType) -> Callable[[Value], Value]:
    def convert(x: Value) -> Value:
        errors: list[EvaluationError] = []
        value = cast(x, target, errors, "", explicit=True)
        if errors:
            raise Failed(value, tuple(errors))
        return value

    return convert


def _is_bool(x: Value) -> bool:
    return type(x) is bool or (type(x) is str and 4 <= len(x) <= 5 and x.lower() in _BOOLS)


_BOOLS: Final = ("true", "false")


def _is_int(x: Value) -> bool:
    return type(x) is int or (type(x) is str and parse_int(x) is not None)


BUILTINS: Final[dict[str, tuple[Function, ...]]] = {}
for _function in (
    Function("LENGTH", (str,), None, int, len),
    Function("CONCAT", (), str, str, lambda *xs: "".join(xs)),
    Function("CONCAT_WS", (str,), str, str, lambda sep, *xs: sep.join(xs)),
    Function("LOWER", (str,), None, str, str.lower),
    Function("UPPER", (str,), None, str, str.upper),
    Function("TRIM", (str,), None, str, lambda x: x.strip(_WHITESPACE)),
    Function("LEFT", (str, int), None, str, _left),
    Function("RIGHT", (str, int), None, str, _right),
    Function("SUBSTRING", (str, int), None, str, _substring),
    Function("SUBSTRING", (str, int, int), None, str, _substring),
    Function("ABS", (int,), None, int, _abs),
    Function("INT", (ANY,), None, int, _explicit_cast(int)),
    Function("BOOL", (ANY,), None, bool, _explicit_cast(bool)),
    Function("STRING", (ANY,), None, str, _explicit_cast(str)),
    Function("IS_BOOL", (ANY,), None, bool, _is_bool),
    Function("IS_INT", (ANY,), None, bool, _is_int),
):
    BUILTINS[_function.name] = (*BUILTINS.get(_function.name, ()), _function)


def resolve(name: str, arity: int) -> Function | None:
    """The overload of ``name`` for ``arity`` arguments: a fixed arity first, then variadic."""
    overloads = BUILTINS.get(name, ())
    for function in overloads:
        if function.variadic is None and len(function.params) == arity:
            return function
    for function in overloads:
        if function.variadic is not None and len(function.params) <= arity:
            return function
    return None
