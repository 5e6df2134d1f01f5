"""CESQL beyond the TCK: properties over generated input, and the behaviour the TCK leaves open."""

from __future__ import annotations

import re
import types
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventmesh.errors import ConfigError
from eventmesh.event import Event
from eventmesh.pipeline import _cesql_parser, cesql

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
int32s = st.integers(INT32_MIN, INT32_MAX)


def _event(**extensions: Any) -> Event:
    return Event(
        type="com.example.test", source="/tests", subject="orders/42", extensions=extensions
    )


def _quote(text: str, quote: str = "'") -> str:
    """A CESQL string literal whose value is ``text``."""
    return quote + text.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


def _evaluate(source: str, event: Event | None = None) -> cesql.Result:
    return cesql.compile(source).evaluate(event or _event())


def _kinds(result: cesql.Result) -> list[str]:
    return [error.kind for error in result.errors]


# -- integers -------------------------------------------------------------------------


def _truncated(a: int, op: str, b: int) -> int | None:
    """The CESQL result of ``a op b`` by its definition, or None for a math error."""
    if op in "/%" and b == 0:
        return None
    if op == "+":
        exact = a + b
    elif op == "-":
        exact = a - b
    elif op == "*":
        exact = a * b
    else:
        quotient = -(-a // b) if (a < 0) != (b < 0) else a // b  # rounded toward zero
        exact = quotient if op == "/" else a - b * quotient
    return exact if INT32_MIN <= exact <= INT32_MAX else None


@given(a=int32s, b=int32s, op=st.sampled_from("+-*/%"))
def test_integer_arithmetic_is_truncated_and_overflow_is_reported(a: int, b: int, op: str) -> None:
    """Arithmetic matches truncated 32-bit semantics; overflow and x/0 are math errors with 0."""
    expected = _truncated(a, op, b)
    for source, event in ((f"x {op} y", _event(x=a, y=b)), (f"{a} {op} {b}", _event())):
        result = _evaluate(source, event)
        if expected is None:
            assert (result.value, _kinds(result)) == (0, ["math"]), source
        else:
            assert (result.value, result.errors) == (expected, ()), source
            if op == "%" and expected:
                assert (expected < 0) == (a < 0)


def test_negating_the_smallest_integer_overflows() -> None:
    """-(-2147483648) is a math error with 0; the literal itself is fine, one past it is not."""
    assert _evaluate("-2147483648").value == INT32_MIN
    assert _kinds(_evaluate("- -2147483648")) == ["math"]
    with pytest.raises(cesql.ParseError, match="32-bit range"):
        cesql.compile("2147483648")
    with pytest.raises(cesql.ParseError, match="32-bit range"):
        cesql.compile("-2147483649")


def test_string_to_integer_casts_accept_only_signed_ascii_digits() -> None:
    """'+7' and '-007' cast to Integer; spaces, underscores, other digits and overflow do not."""
    assert _evaluate("INT('+7') + INT('-007')").value == 0
    for text in (" 7", "1_000", "\u0661", "2147483648", ""):
        result = _evaluate(f"INT({_quote(text)})")
        assert (result.value, _kinds(result)) == (0, ["cast"]), text


# -- LIKE -----------------------------------------------------------------------------


def _like_regex(pattern: str) -> str:
    """An independent translation of a LIKE pattern to a regular expression."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "%_\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
        i += 1
    return "".join(out)


like_text = st.text(alphabet="ab%_\\\n", max_size=10)


@given(pattern=like_text, value=like_text)
def test_like_agrees_with_a_regex_translation(pattern: str, value: str) -> None:
    """x LIKE p and x NOT LIKE p agree with re.fullmatch of an independent translation."""
    expected = re.fullmatch(_like_regex(pattern), value, re.DOTALL) is not None
    event = _event(x=value)
    assert _evaluate(f"x LIKE {_quote(pattern)}", event) == cesql.Result(expected)
    assert _evaluate(f"x NOT LIKE {_quote(pattern)}", event) == cesql.Result(not expected)


def test_like_is_linear_on_patterns_that_make_regexes_backtrack() -> None:
    """Many % and a long subject finish at once, with the right answer."""
    text = "a" * 20_000
    assert not _evaluate("x LIKE '%a%a%a%a%a%a%a%b'", _event(x=text)).value
    assert _evaluate("x LIKE '%a%a_a%a%a%a%a%'", _event(x=text)).value


def test_like_casts_its_operand_to_string() -> None:
    """Integers and booleans are matched by their String form."""
    assert _evaluate("myint LIKE '-1_'", _event(myint=-12)).value is True
    assert _evaluate("mybool NOT LIKE 'f%'", _event(mybool=True)).value is True


# -- string literals ------------------------------------------------------------------


@given(text=st.text(), quote=st.sampled_from("'\""))
def test_string_literals_round_trip(text: str, quote: str) -> None:
    """Any text, quoted with \\\\ and \\' (or \\") escapes, evaluates back to itself."""
    assert _evaluate(_quote(text, quote)) == cesql.Result(text)


def test_other_backslashes_stay_as_written() -> None:
    """A backslash before anything but the quote or a backslash is kept, so LIKE sees \\%."""
    assert _evaluate(r"'a\%b\n'").value == "a\\%b\\n"
    assert _evaluate(r"""'it\'s' = "it's" AND "say \"hi\"" = 'say "hi"'""").value is True


# -- parsing --------------------------------------------------------------------------


@given(st.text())
def test_compile_raises_nothing_but_parse_error(source: str) -> None:
    """Arbitrary text either compiles or raises ParseError, a ConfigError of kind "parse"."""
    try:
        cesql.compile(source)
    except cesql.ParseError as exc:
        error = exc
    else:
        return
    assert isinstance(error, ConfigError)
    assert error.kind == "parse"
    assert 0 <= error.position <= len(source)


TOKENS = [
    *("TRUE", "FALSE", "NOT", "AND", "OR", "XOR", "LIKE", "IN", "EXISTS", "(", ")", ","),
    *("+", "-", "*", "/", "%", "=", "!=", "<>", "<", "<=", ">", ">=", "0", "7"),
    *("-2147483648", "2147483647", "'a%'", "'10'", "'true'", '"x"', "myint", "mystr"),
    *("mybool", "missing", "subject", "time", "LENGTH(", "CONCAT(", "CONCAT_WS("),
    *("SUBSTRING(", "LEFT(", "ABS(", "INT(", "BOOL(", "IS_INT(", "TRIM(", "NOPE("),
]


@given(st.lists(st.sampled_from(TOKENS), max_size=12).map(" ".join))
def test_token_soup_compiles_or_raises_parse_error(source: str) -> None:
    """Plausible token sequences either compile or raise ParseError, nothing else."""
    try:
        cesql.compile(source)
    except cesql.ParseError:
        pass


@pytest.mark.parametrize(
    ("source", "column", "expected"),
    [
        ("x LIKE 123", 8, "a string literal as the LIKE pattern"),
        ("ABC(", 5, "a value, an attribute, a function call or '('"),
        ("a = = b", 5, "a value"),
        ("(1 + 2", 7, "')' to close the '(' at column 1"),
        ("1 2", 3, "an operator or the end of the expression"),
        ("x NOT = 1", 7, "LIKE or IN after NOT"),
        ("'abc", 1, "has no closing '"),
        ("subject @ 1", 9, "unexpected character '@'"),
        ("my_ext = 1", 1, "is not an attribute name"),
        ("x IN ()", 7, "a value"),
    ],
)
def test_parse_errors_point_at_the_problem(source: str, column: int, expected: str) -> None:
    """A ParseError names the column, what was expected, and shows the text with a caret."""
    with pytest.raises(cesql.ParseError) as raised:
        cesql.compile(source)
    error = raised.value
    assert (error.column, error.expression) == (column, source)
    message = str(error)
    assert f"column {column}" in message
    assert expected in message
    assert f"    {source}\n    {' ' * (column - 1)}^" in message


def test_parse_errors_in_multi_line_expressions_name_the_line() -> None:
    """The line and the column within it are given, with the caret under that line."""
    with pytest.raises(cesql.ParseError) as raised:
        cesql.compile("subject = 'x'\n  AND (1 +")
    assert raised.value.column == 11
    assert "line 2, column 11" in str(raised.value)
    assert str(raised.value).endswith("    " + "  AND (1 +\n" + " " * 14 + "^")


def test_too_deep_expressions_are_parse_errors() -> None:
    """Deep nesting and very long chains are refused with ParseError, never RecursionError."""
    with pytest.raises(cesql.ParseError, match="nests more than"):
        cesql.compile("(" * 500 + "1" + ")" * 500)
    with pytest.raises(cesql.ParseError, match="nests more than"):
        cesql.compile("NOT " * 900 + "TRUE")
    with pytest.raises(cesql.ParseError, match="operators deep"):
        cesql.compile(" + ".join(["1"] * 1000))
    assert _evaluate(" + ".join(["x"] * 200), _event(x=1)).value == 200


# -- evaluation -----------------------------------------------------------------------


def _expressions() -> st.SearchStrategy[str]:
    atoms = st.one_of(
        int32s.map(str),
        st.booleans().map(str),
        st.text(alphabet="ab1%_ ", max_size=4).map(_quote),
        st.sampled_from(["myint", "mystr", "mybool", "missing", "subject", "time", "ID"]),
    )

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        operators = ["AND", "OR", "XOR", "=", "!=", "<>", "<", "<=", ">", ">=", *"+-*/%"]
        functions = ["LENGTH", "CONCAT", "CONCAT_WS", "LOWER", "UPPER", "TRIM", "LEFT", "RIGHT"]
        functions += ["SUBSTRING", "ABS", "INT", "BOOL", "STRING", "IS_BOOL", "IS_INT", "NOPE"]
        return st.one_of(
            st.tuples(inner, st.sampled_from(operators), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            st.tuples(st.sampled_from(["NOT ", "-"]), inner).map(lambda t: f"{t[0]}({t[1]})"),
            st.tuples(inner, st.sampled_from(["LIKE", "NOT LIKE"]), like_text.map(_quote)).map(
                " ".join
            ),
            st.tuples(
                inner, st.sampled_from(["IN", "NOT IN"]), st.lists(inner, min_size=1, max_size=3)
            ).map(lambda t: f"{t[0]} {t[1]} ({', '.join(t[2])})"),
            st.tuples(st.sampled_from(functions), st.lists(inner, max_size=3)).map(
                lambda t: f"{t[0]}({', '.join(t[1])})"
            ),
            st.sampled_from(["EXISTS myint", "EXISTS missing", "EXISTS time"]),
        )

    return st.recursive(atoms, extend, max_leaves=12)


events = st.builds(
    _event,
    **{
        name: st.one_of(int32s, st.text(alphabet="ab1 tT", max_size=4), st.booleans())
        for name in ("myint", "mystr", "mybool")
    },
)


@given(source=_expressions(), event=events)
def test_evaluation_never_raises_and_only_reports_errors(source: str, event: Event) -> None:
    """Every valid expression yields a CESQL value, no generic error, and matches() agrees."""
    expression = cesql.compile(source)
    result = expression.evaluate(event)
    assert type(result.value) in (bool, int, str)
    if type(result.value) is int:
        assert INT32_MIN <= result.value <= INT32_MAX
    assert all(isinstance(error, cesql.EvaluationError) for error in result.errors)
    assert "generic" not in _kinds(result), result.errors
    assert expression.matches(event) is (result.value is True and not result.errors)
    assert expression.evaluate(event) == result


def _literal(value: bool | int | str) -> str:
    if type(value) is bool:
        return "TRUE" if value else "FALSE"
    return str(value) if type(value) is int else _quote(value)  # type: ignore[arg-type]


values = st.one_of(int32s, st.booleans(), st.text(alphabet="12-tTrRuUeE", max_size=5))


@given(
    a=values,
    b=values,
    op=st.sampled_from(
        ["=", "!=", "<>", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "AND", "OR", "XOR"]
    ),
)
def test_fast_paths_agree_with_the_general_path(a: Any, b: Any, op: str) -> None:
    """Attribute-vs-constant, attribute-vs-attribute and folded constants give one result."""
    event = _event(x=a, y=b)
    results = [
        _evaluate(source, event)
        for source in (f"x {op} y", f"x {op} {_literal(b)}", f"{_literal(a)} {op} {_literal(b)}")
    ]
    assert len({(r.value, type(r.value), tuple(_kinds(r))) for r in results}) == 1, results


def test_matches_passes_only_an_error_free_true() -> None:
    """The filter view: true without errors passes; errors, non-booleans and false do not."""
    event = _event(myint=5)
    assert cesql.compile("myint = 5").matches(event) is True
    assert cesql.compile("'abc' OR TRUE").evaluate(event) == cesql.Result(
        True,
        (
            cesql.EvaluationError(
                "cast", "cannot cast String 'abc' to Boolean in `'abc' OR TRUE` (column 1)"
            ),
        ),
    )
    for source in ("'abc' OR TRUE", "FALSE", "1", "'true'", "missing", "NOT 10", "NOPE()"):
        assert cesql.compile(source).matches(event) is False, source


def test_missing_attributes_give_the_zero_value_of_the_operator() -> None:
    """Each operator that reads a missing attribute yields its own zero value, one error."""
    for source, value in (
        ("missing", False),
        ("missing * 5", 0),
        ("LOWER(missing)", ""),
        ("NOT (missing = 1)", False),
        ("missing + (1 / 0)", 0),
    ):
        result = _evaluate(source)
        assert result.value == value, source
        assert type(result.value) is type(value), source
    assert _kinds(_evaluate("missing + (1 / 0)")) == ["missingAttribute", "math"]
    assert _kinds(_evaluate("FALSE AND missing")) == []
    assert _kinds(_evaluate("missing OR missing")) == ["missingAttribute", "missingAttribute"]


def test_implicit_integer_to_boolean_is_a_cast_error_but_bool_is_explicit() -> None:
    """NOT 10 and 10 AND TRUE report cast errors (as the TCK's NOT 10); BOOL(10) does not."""
    assert _evaluate("BOOL(10) AND TRUE") == cesql.Result(True)
    assert _kinds(_evaluate("10 AND TRUE")) == ["cast"]
    assert _evaluate("TRUE = 1") == cesql.Result(True)  # Boolean to Integer is implicit
    assert _kinds(_evaluate("1 = TRUE")) == ["cast"]
    assert _evaluate("myint < '10'", _event(myint=9)) == cesql.Result(True)
    assert _kinds(_evaluate("myint < ''", _event(myint=0))) == ["cast"]


def test_precedence_follows_the_spec() -> None:
    """NOT binds tighter than AND; AND, OR and XOR share one level, left to right."""
    assert _evaluate("NOT TRUE AND FALSE").value is False
    assert _evaluate("FALSE AND TRUE OR TRUE").value is True
    assert _evaluate("TRUE OR TRUE AND FALSE").value is False
    assert _evaluate("1 + 2 * 3 - 4 / 2 % 3").value == 5
    assert _evaluate("-2 * 3 = -6 AND 2 - -1 = 3").value is True
    assert _evaluate("mystr NOT LIKE 'a%' AND mystr IN ('b', 'c')", _event(mystr="b")).value is True


def test_attribute_names_are_case_insensitive_and_values_are_not() -> None:
    """SUBJECT, Subject and subject are one attribute; string comparison is case sensitive."""
    event = _event(myext="Value")
    assert _evaluate("SUBJECT = subject AND Subject = 'orders/42'", event).value is True
    assert _evaluate("MyExt = 'value'", event).value is False
    assert _evaluate("int(LENGTH(myext)) = 5", event).value is True


def test_time_is_its_rfc3339_string() -> None:
    """time reads as in the JSON format: Z for UTC, the offset otherwise."""
    utc = _event().replace(time=datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    assert _evaluate("time", utc).value == "2024-05-01T12:00:00Z"
    plus2 = _event().replace(
        time=datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    )
    assert _evaluate("time LIKE '%+02:00' AND time", plus2).errors == (
        cesql.EvaluationError(
            "cast",
            "cannot cast String '2024-05-01T12:00:00.000005+02:00' to Boolean "
            "in `time LIKE '%+02:00' AND time` (column 1)",
        ),
    )
    assert _evaluate("EXISTS time", _event().replace(time=None)).value is False


def test_in_casts_items_to_the_left_operand_type() -> None:
    """IN compares like =, with the left operand's type; failed casts are reported."""
    event = _event(myint=1)
    assert _evaluate("myint IN ('1', '2')", event) == cesql.Result(True)
    assert _kinds(_evaluate("myint IN ('1', 'x')", event)) == ["cast"]
    assert _evaluate("'1' IN (myint, missing)", event).value is False
    assert _evaluate("TRUE NOT IN (mystr)", _event(mystr="true")) == cesql.Result(False)


def test_string_functions_follow_the_spec_edges() -> None:
    """TRIM strips Unicode white space only; SUBSTRING/LEFT/RIGHT report bad positions."""
    assert _evaluate("TRIM('\u3000\t a \u00a0\n')").value == "a"
    assert _evaluate("TRIM('\x1f a \x1f')").value == "\x1f a \x1f"
    assert _evaluate("CONCAT_WS('-', 1, TRUE, 'x')").value == "1-true-x"
    assert _evaluate("SUBSTRING('abc', 3, 5)").value == "c"
    result = _evaluate("SUBSTRING('abc', 1, -1)")
    assert (result.value, _kinds(result)) == ("", ["functionEvaluation"])
    assert _evaluate("IS_INT('-12') AND IS_BOOL('False') AND NOT IS_INT(TRUE)").value is True
    assert _kinds(_evaluate("LENGTH('a', 'b')")) == ["missingFunction"]


# -- compiled once --------------------------------------------------------------------


def _reachable(fn: object) -> list[object]:
    """Every object the closures of ``fn`` hold, transitively."""
    seen: list[object] = []
    stack: list[object] = [fn]
    while stack:
        obj = stack.pop()
        if any(obj is other for other in seen):
            continue
        seen.append(obj)
        if isinstance(obj, types.FunctionType):
            stack.extend(cell.cell_contents for cell in obj.__closure__ or ())
        elif isinstance(obj, tuple | list):
            stack.extend(obj)
    return seen


def test_compile_leaves_closures_and_no_syntax_tree() -> None:
    """After compile, the expression is nested closures: no AST node is kept to walk per event."""
    expression = cesql.compile(
        "type = 'com.example.test' AND subject LIKE 'orders/%' AND (myint + 1) * 2 > 10 "
        "AND LOWER(mystr) IN ('a', mystr) AND NOT EXISTS missing"
    )
    assert set(type(expression).__slots__) == {"_fn", "source"}
    held = _reachable(expression._fn)
    node_types = tuple(
        t
        for t in vars(_cesql_parser).values()
        if isinstance(t, type)
        and t.__module__ == _cesql_parser.__name__
        and t.__name__[0].isupper()
    )
    assert not [obj for obj in held if isinstance(obj, node_types)]
    assert sum(isinstance(obj, types.FunctionType) for obj in held) >= 8
    for n in range(100):
        assert expression.matches(_event(myint=n, mystr="A")) is (n > 4)


def test_constant_sub_expressions_are_folded_unless_they_fail() -> None:
    """1 + 2 * 3 compiles to a constant; 1 / 0 is kept so its error is reported every time."""
    folded = cesql.compile("CONCAT('a', 'b') = 'ab' AND 1 + 2 * 3 = 7")
    assert folded._fn.__name__ == "constant"
    failing = cesql.compile("1 / 0")
    assert failing._fn.__name__ != "constant"
    assert _kinds(failing.evaluate(_event())) == _kinds(failing.evaluate(_event())) == ["math"]


def test_the_public_surface_is_sorted_and_complete() -> None:
    """cesql.__all__ is sorted, every name exists, and the public classes say they are cesql's."""
    assert cesql.__all__ == sorted(cesql.__all__)
    assert all(hasattr(cesql, name) for name in cesql.__all__)
    assert cesql.ParseError.__module__ == cesql.EvaluationError.__module__ == cesql.__name__
    assert repr(cesql.compile("TRUE")) == "cesql.compile('TRUE')"
    assert cesql.compile(" id ").source == " id "
