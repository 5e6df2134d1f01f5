"""Hostile specs and events: every filter dialect is bounded in size, nesting, time and memory.

Each attack here once froze or exhausted the sidecar (issue 13). The few wall-clock
bounds are generous (a second, where the old code took minutes); the rest assert on what
was refused and why.
"""

from __future__ import annotations

import re
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import eventmesh
from eventmesh.errors import ConfigError, PipelineError
from eventmesh.event import Event
from eventmesh.pipeline import cesql, compile_filter, compile_pattern, compile_pipeline
from eventmesh.pipeline.limits import FilterLimits, json_size_exceeds

GENEROUS = 1.0
"""Seconds: a bound only a backtracking or quadratic matcher could miss."""


def _event(subject: str = "orders/42", data: Any = None, **extensions: Any) -> Event:
    return Event(
        type="com.example.test", source="/tests", subject=subject, data=data, extensions=extensions
    )


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


# -- wildcards ----------------------------------------------------------------------------


def test_a_wildcard_that_made_the_regex_backtrack_answers_at_once() -> None:
    """`*a*a*...*b` against a run of a's: the regex took over a minute; the glob one pass."""
    matches = compile_pattern({"subject": [{"wildcard": "*a" * 12 + "*b"}]}, where="p")
    result, seconds = _timed(lambda: matches(_event("a" * 40)))
    assert result is False
    result, seconds_long = _timed(lambda: matches(_event("a" * 100_000)))
    assert result is False
    assert max(seconds, seconds_long) < GENEROUS
    assert matches(_event("a" * 40 + "b")) is True


def test_a_wildcard_with_thousands_of_stars_stays_linear() -> None:
    """Hundreds of pieces against a long value: one left-to-right pass, no blow-up."""
    pattern = "*" + "*".join(["ab"] * 2000) + "*c"
    matches = compile_pattern({"data": {"x": [{"wildcard": pattern}]}}, where="p")
    value = "ab" * 50_000
    result, seconds = _timed(lambda: matches(_event(data={"x": value})))
    assert result is False
    assert matches(_event(data={"x": value + "c"})) is True
    assert seconds < GENEROUS


def _glob_regex(pattern: str) -> str:
    """An independent translation of a wildcard to a regular expression."""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if pattern[i] == "*" else re.escape(pattern[i]))
        i += 1
    return "".join(out)


wildcards = st.text(alphabet="ab*", max_size=10).filter(lambda p: "**" not in p)


@given(pattern=wildcards, value=st.text(alphabet="ab*", max_size=12))
def test_wildcards_agree_with_a_regex_translation(pattern: str, value: str) -> None:
    """The linear glob answers as re.fullmatch of an independent translation does."""
    expected = re.fullmatch(_glob_regex(pattern), value, re.DOTALL) is not None
    spec = {"data": {"x": [{"wildcard": pattern}]}}
    assert compile_pattern(spec, where="p")(_event(data={"x": value})) is expected
    excluded = {"data": {"x": [{"anything-but": {"wildcard": pattern}}]}}
    assert compile_pattern(excluded, where="p")(_event(data={"x": value})) is not expected


def test_ignore_case_conditions_read_only_what_they_compare() -> None:
    """Prefix, suffix and equals-ignore-case decide on a long value as on a short one."""
    value = "ORDERS/" + "x" * 100_000 + ".PNG"
    for condition, expected in [
        ({"prefix": {"equals-ignore-case": "orders/"}}, True),
        ({"suffix": {"equals-ignore-case": ".png"}}, True),
        ({"suffix": {"equals-ignore-case": ""}}, True),
        ({"equals-ignore-case": "orders/"}, False),
    ]:
        matches = compile_pattern({"data": {"f": [condition]}}, where="p")
        assert matches(_event(data={"f": value})) is expected, condition
    sharp = compile_pattern(
        {"data": {"f": [{"prefix": {"equals-ignore-case": "STRASSE"}}]}}, where="p"
    )
    assert sharp(_event(data={"f": "Straße 1"})) is True
    same = compile_pattern({"data": {"f": [{"equals-ignore-case": "ORDERS/X.png"}]}}, where="p")
    assert same(_event(data={"f": "orders/x.PNG"})) is True


def _largest(condition: Any, wrap: Callable[[list[Any]], Any]) -> Any:
    """The spec holding as many copies of ``condition`` as 8 KiB allows."""
    import json

    items: list[Any] = []
    while len(json.dumps(wrap([*items, condition]))) <= 8192:
        items.append(condition)
    return wrap(items)


ARRAY_EVENT = _event(
    data={"x": ["a" * 10] * 80_000, "o": [{"k": 1}] * 80_000, "n": [[[[1]]]] * 20_000}
)


@pytest.mark.parametrize(
    "spec",
    [
        _largest({"prefix": "b"}, lambda items: {"data": {"x": items}}),
        _largest({"numeric": [">", 1]}, lambda items: {"data": {"x": items}}),
        {"data": {"$or": [{"x": ["b"]}] * 300}},
        {"data": {"o": {"k": [{"numeric": [">", 5]}] * 300}}},
        _largest({"wildcard": "*b*"}, lambda items: {"subject": items}),
    ],
)
def test_many_conditions_over_a_long_array_stop_after_max_steps(spec: Any) -> None:
    """Conditions x elements is bounded: 480 prefixes over 80,000 elements took 6 s."""
    matches = compile_pattern(spec, where="p")
    result, seconds = _timed(lambda: matches(ARRAY_EVENT))
    assert result is False
    assert seconds < GENEROUS


def test_steps_are_counted_as_the_array_is_walked() -> None:
    """A match early in a long array is found; a walk that runs out of steps does not match."""
    limits = FilterLimits(max_steps=10_000)
    first = compile_pattern({"data": {"o": {"k": [1]}}}, where="p", limits=limits)
    assert first(ARRAY_EVENT) is True  # the first element matches
    late = _event(data={"o": [{"k": 2}] * 20_000 + [{"k": 1}]})
    assert first(late) is False  # 20,000 elements x 2 checks: out of steps first
    assert compile_pattern({"data": {"o": {"k": [1]}}}, where="p")(late) is True  # 100,000
    excluded = compile_pattern(
        {"data": {"x": [{"anything-but": {"wildcard": "*b*"}}]}}, where="p", limits=limits
    )
    assert excluded(_event(data={"x": ["a"] * 100})) is True
    assert excluded(_event(data={"x": ["a"] * 20_000})) is False  # out of steps: no match
    deep: Any = [{"k": 1}]
    for _ in range(3):
        deep = [deep] * 10
    assert first(_event(data={"o": deep})) is True


# -- CESQL LIKE ---------------------------------------------------------------------------


def test_a_like_with_thousands_of_underscores_is_refused_on_a_long_value_not_run() -> None:
    """The 20 KB-pattern attack: a LIKE costing pattern x value is an error at once."""
    source = "subject LIKE '%" + "a_" * 2000 + "b%'"
    expression = cesql.compile(source)
    result, seconds = _timed(lambda: expression.evaluate(_event("a" * 1_000_000)))
    assert result.value is False
    assert [e.kind for e in result.errors] == ["generic"]
    assert "limits.filters.max_scan" in result.errors[0].message
    assert seconds < GENEROUS
    roomy = cesql.compile(source, limits=FilterLimits(max_string=10**8, max_scan=10**8))
    assert roomy.matches(_event("x" + "ab" * 2000 + "b")) is True  # within the allowance


def test_like_reads_long_values_in_linear_time_within_the_limits() -> None:
    """With room to read 8 MB, many-% and gapped LIKEs still answer a 1 MB value fast."""
    roomy = FilterLimits(max_string=8_000_000, max_scan=8_000_000)
    value = "ab" * 500_000
    many = cesql.compile("subject LIKE '%" + "%".join(["ab"] * 1000) + "%c'", limits=roomy)
    gapped = cesql.compile("subject LIKE '%a_a_a_c%'", limits=roomy)
    result, seconds = _timed(lambda: (many.evaluate(_event(value)), gapped.evaluate(_event(value))))
    assert result == (cesql.Result(False), cesql.Result(False))
    assert seconds < GENEROUS
    assert gapped.matches(_event(value + "aXaYaZc")) is True
    assert many.matches(_event(value + "c")) is True


def test_the_scan_allowance_is_shared_by_the_expression_s_likes() -> None:
    """Each of n LIKEs reads at most max_scan / n characters; one LIKE reads up to max_string."""
    limits = FilterLimits(max_string=1000, max_scan=1000)
    one = cesql.compile("subject LIKE '%x%'", limits=limits)
    assert one.matches(_event("a" * 999 + "x")) is True
    assert one.evaluate(_event("a" * 1001)).errors[0].kind == "generic"
    four = cesql.compile(" OR ".join(["subject LIKE '%x%'"] * 4), limits=limits)
    assert four.matches(_event("a" * 249 + "x")) is True
    assert four.matches(_event("a" * 250 + "x")) is False
    prefix_only = cesql.compile("subject LIKE 'a%'", limits=limits)  # reads the pattern only
    assert prefix_only.matches(_event("a" * 100_000)) is True


# -- CESQL string functions -----------------------------------------------------------------


def test_concat_of_a_long_attribute_never_builds_the_string() -> None:
    """CONCAT of 800 references to a 1 MB subject: an error, not 800 MB (3.8 GB before)."""
    source = "LENGTH(CONCAT(" + ", ".join(["subject"] * 800) + ")) > 0"
    expression = cesql.compile(source)
    event = _event("s" * 1_000_000)
    tracemalloc.start()
    try:
        result = expression.evaluate(event)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.value is False
    assert [e.kind for e in result.errors] == ["functionEvaluation"]
    assert "limits.filters.max_string" in result.errors[0].message
    assert peak < 10 * 1024 * 1024


def test_strings_a_function_builds_are_bounded_by_max_string() -> None:
    """A result of exactly max_string characters is built; one more is an evaluation error."""
    limits = FilterLimits(max_string=10)
    fits = cesql.compile("CONCAT(subject, '12345') = 'abcde12345'", limits=limits)
    assert fits.evaluate(_event("abcde")) == cesql.Result(True)
    over = cesql.compile("CONCAT(subject, '123456') = 'x'", limits=limits).evaluate(_event("abcde"))
    assert over.value is False
    assert [e.kind for e in over.errors] == ["functionEvaluation"]
    upper = cesql.compile("UPPER(subject) = 'x'", limits=limits).evaluate(_event("ß" * 8))
    assert [e.kind for e in upper.errors] == ["functionEvaluation"]  # 16 characters once upper
    nested = "CONCAT(" * 20 + "subject" + ", subject)" * 20
    assert cesql.compile(nested).evaluate(_event("y" * 10_000)).errors[0].kind == (
        "functionEvaluation"
    )


def test_casts_of_long_strings_are_cast_errors_not_failures() -> None:
    """A 5,000-digit string is no Integer: a cast error, where int() used to raise."""
    result = cesql.compile("INT(subject) = 1").evaluate(_event("1" * 5000))
    assert [e.kind for e in result.errors] == ["cast"]
    assert cesql.compile("INT(subject) = 7").matches(_event("+0000007")) is True
    assert cesql.compile("BOOL(subject)").evaluate(_event("t" * 100_000)).errors[0].kind == "cast"


# -- transform templates --------------------------------------------------------------------


def test_a_template_never_renders_more_than_max_render() -> None:
    """2,000 uses of a 1 MB value fail the step at once, instead of building 2 GB."""
    template = {"variables": {"a": "$.data.s"}, "template": "${a}" * 2000}
    _, change = compile_pipeline(None, [{"template": template}], where="t")
    assert change is not None
    tracemalloc.start()
    try:
        with pytest.raises(PipelineError, match=r"limits\.filters\.max_render") as raised:
            change(_event(data={"s": "x" * 1_000_000}))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raised.value.step == "t.transform[0].template"
    assert peak < 10 * 1024 * 1024
    small = change(_event(data={"s": "ab"}))
    assert small is not None
    assert small.data == "ab" * 2000
    once = {"variables": {"a": "$.data.s"}, "template": '{"payload": "${a}", "again": "${a}"}'}
    _, wrap = compile_pipeline(None, [{"template": once}])
    assert wrap is not None
    wrapped = wrap(_event(data={"s": "y" * 500_000}))
    assert wrapped is not None
    assert wrapped.data == {"payload": "y" * 500_000, "again": "y" * 500_000}


# -- sizes --------------------------------------------------------------------------------


def test_a_long_expression_is_refused_before_it_is_parsed() -> None:
    """A 4 MB `1+1+...` (40 s and 933 MB before) is a ParseError naming the limit at once."""
    source = "+".join(["1"] * 2_000_000)
    with pytest.raises(cesql.ParseError, match=r"limits\.filters\.max_size") as raised:
        cesql.compile(source)
    assert len(str(raised.value)) < 400  # the message shows a window, not 4 MB
    with pytest.raises(ConfigError, match=r"subscription\.filter: .*limits\.filters\.max_size"):
        compile_pipeline({"sql": "x IN (" + ", ".join(["'v'"] * 2_000_000) + ")"})


def test_filter_pattern_and_transform_specs_are_bounded_as_json() -> None:
    """Every spec is measured as JSON before it is read: a filter, a pattern, a transform."""
    huge_list = ["v"] * 1_000_000
    with pytest.raises(ConfigError, match=r"^s\.filter: the filter is more than 8192"):
        compile_pipeline({"pattern": {"type": huge_list}}, where="s")
    with pytest.raises(ConfigError, match=r"^p: the pattern is more than 8192"):
        compile_pattern({"type": huge_list}, where="p")
    with pytest.raises(ConfigError, match=r"^s\.transform: the transform is more than 8192"):
        compile_pipeline(None, [{"constant": huge_list}], where="s")
    with pytest.raises(ConfigError, match=r"limits\.filters\.max_size"):
        compile_pipeline({"exact": {f"a{i}": "x" for i in range(100_000)}})
    # Just under the limit compiles.
    compile_pipeline({"pattern": {"type": ["v" * 8000]}})


def test_the_size_walk_stops_at_the_limit() -> None:
    """The walk is bounded by the limit, not the spec, and its estimate is close to JSON."""
    import msgspec

    spec = {"all": [{"exact": {"type": "com.example"}}, {"sql": "a = 'b'"}], "n": [1, 2.5, None]}
    size = len(msgspec.json.encode(spec))
    assert not json_size_exceeds(spec, size)
    assert json_size_exceeds(spec, size - 1)
    deep: Any = "x"
    for _ in range(100_000):  # deeper than any recursion could walk
        deep = [deep]
    assert json_size_exceeds(deep, 1000)
    assert json_size_exceeds(10**100_000, 1000)  # no str() of a huge int


# -- nesting ------------------------------------------------------------------------------


def _nested(key: str, levels: int, leaf: Any, *, as_list: bool) -> Any:
    spec = leaf
    for _ in range(levels):
        spec = {key: [spec] if as_list else spec}
    return spec


LEAF = {"exact": {"type": "x"}}


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        (_nested("not", 900, LEAF, as_list=False), "f" + ".not" * 32),
        (_nested("all", 300, LEAF, as_list=True), "f" + ".all[0]" * 32),
        (_nested("any", 300, LEAF, as_list=True), "f" + ".any[0]" * 32),
    ],
)
def test_deep_filters_are_config_errors_naming_the_limit(spec: Any, where: str) -> None:
    """`not` x900 or `all` x300 (a 500 RecursionError before) is a ConfigError at depth 33."""
    with pytest.raises(ConfigError, match=r"limits\.filters\.max_depth") as raised:
        compile_filter(spec, where="f")
    assert raised.value.key == where


def test_depth_is_counted_per_level_up_to_the_limit() -> None:
    """32 levels compile and match; 33 do not; lists count as a level, like `all`."""
    limits = FilterLimits(max_depth=32)
    fits = compile_filter(_nested("not", 31, LEAF, as_list=False), limits=limits)
    assert fits(_event()) is True  # 31 nots around a mismatch
    with pytest.raises(ConfigError, match="nests more than 32 levels"):
        compile_filter(_nested("not", 32, LEAF, as_list=False), limits=limits)
    nested_lists: Any = LEAF
    for _ in range(40):
        nested_lists = [nested_lists]
    with pytest.raises(ConfigError, match="max_depth"):
        compile_filter(nested_lists)


def test_deep_patterns_are_config_errors_naming_the_limit() -> None:
    """Nested data objects and nested $or are bounded like filters."""
    data: Any = ["x"]
    for i in range(200):
        data = {f"k{i}": data}
    with pytest.raises(ConfigError, match=r"the pattern nests more than 32.*max_depth"):
        compile_pattern({"data": data}, where="p")
    branches: Any = {"type": ["x"]}
    for _ in range(200):
        branches = {"$or": [branches]}
    with pytest.raises(ConfigError, match="max_depth"):
        compile_pattern(branches, where="p")
    inner: Any = {"a": ["x"]}
    for _ in range(200):
        inner = {"$or": [inner]}
    with pytest.raises(ConfigError, match="max_depth"):
        compile_pattern({"data": inner}, where="p")


@pytest.mark.parametrize(
    "source",
    [
        "(" * 900 + "1" + ")" * 900,
        "NOT " * 900 + "TRUE",
        "- " * 900 + "x",
        "ABS(" * 500 + "1" + ")" * 500,
        "1 IN (" * 500 + "1" + ")" * 500,
    ],
)
def test_deep_expressions_are_parse_errors_naming_the_limit(source: str) -> None:
    """Parentheses, prefix operators, calls and sets stop at max_depth, before recursing."""
    with pytest.raises(cesql.ParseError, match=r"nests more than 32 levels.*max_depth"):
        cesql.compile(source)
    with pytest.raises(ConfigError, match=r"^s\.filter\.sql: .*limits\.filters\.max_depth"):
        compile_pipeline({"sql": source}, where="s")


def test_a_deep_transform_constant_is_a_config_error() -> None:
    """A constant nested deeper than max_depth is refused; one within it compiles."""
    deep: Any = 1
    for _ in range(900):
        deep = [deep]
    with pytest.raises(ConfigError, match=r"^t\.transform\[0\]\.constant: .*max_depth"):
        compile_pipeline(None, [{"constant": deep}], where="t")
    _, change = compile_pipeline(None, [{"constant": _nested("a", 31, 1, as_list=False)}])
    assert change is not None


def test_deeply_nested_data_is_read_without_recursion() -> None:
    """Arrays nested 5,000 deep under a nested pattern: an answer, not a RecursionError."""
    value: Any = [{"b": "x"}]
    for _ in range(5000):
        value = [value]
    matches = compile_pattern({"data": {"a": {"b": ["x"]}}}, where="p")
    assert matches(_event(data={"a": value})) is True
    assert matches(_event(data={"a": [[[]], [[{"b": "y"}]]]})) is False
    absent = compile_pattern({"data": {"a": {"b": [{"exists": False}]}}}, where="p")
    assert absent(_event(data={"a": [[[]]]})) is True


# -- configured limits ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_configured_limits_reach_the_config_file_and_the_sdk() -> None:
    """limits.filters from the configuration bounds the file's subscriptions and subscribe()."""
    deep = _nested("not", 4, LEAF, as_list=False)
    with pytest.raises(ConfigError, match=r"nests more than 3 levels \(limits\.filters\.max_depth"):
        eventmesh.load_config(
            {
                "limits": {"filters": {"max_depth": 3}},
                "subscriptions": [
                    {"name": "s", "topic": "t", "sink": {"handler": "m:f"}, "filter": deep}
                ],
            }
        )
    eventmesh.load_config(
        {"subscriptions": [{"name": "s", "topic": "t", "sink": {"handler": "m:f"}, "filter": deep}]}
    )
    async with eventmesh.Mesh({"limits": {"filters": {"max_size": 100}}}) as mesh:
        with pytest.raises(ConfigError, match="more than 100 characters"):
            mesh.subscribe("t", "g", filter={"sql": "subject = '" + "x" * 100 + "'"})
        mesh.subscribe("t", "g", filter={"sql": "subject = '" + "x" * 60 + "'"})
