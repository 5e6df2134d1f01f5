"""Fuzz: random filter specs, CESQL expressions and patterns against random events.

Whatever a client sends, compiling raises nothing but ConfigError, and evaluating returns
a bool, raises nothing, and takes at most a few milliseconds (the cap below is generous
so that a slow, shared machine cannot make it flaky).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventmesh.errors import ConfigError
from eventmesh.event import Event
from eventmesh.pipeline import cesql, compile_pipeline
from eventmesh.pipeline.limits import FilterLimits
from eventmesh.testing import strategies as events_st

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

CAP = 0.05
"""Seconds one evaluation may take: far above the microseconds a filter costs."""

SMALL = FilterLimits(max_size=2048, max_depth=8, max_string=256, max_scan=4096)
"""Tight limits, so that the fuzz reaches them often; the defaults are tested as well."""

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

names = st.sampled_from(["type", "subject", "id", "source", "time", "tenant", "n", "Bad", "data"])
short_text = st.text(alphabet="ab*%_\\/.-Xß 0", max_size=8)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), short_text)
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=5)

# -- CESQL ----------------------------------------------------------------------------------

TOKENS = [
    *("subject", "type", "tenant", "n", "missing", "'a%b_'", "'x'", '"y"', "'\\%'"),
    *("0", "7", "-1", "2147483647", "TRUE", "false", "(", ")", ",", "+", "-", "*", "/", "%"),
    *("=", "!=", "<>", "<", ">=", "AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS"),
    *("CONCAT(", "CONCAT_WS(", "LOWER(", "UPPER(", "TRIM(", "LEFT(", "RIGHT(", "SUBSTRING("),
    *("LENGTH(", "ABS(", "INT(", "BOOL(", "STRING(", "IS_INT(", "IS_BOOL(", "NOPE("),
]
token_soup = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=40).map(" ".join)

atoms = st.sampled_from(["subject", "tenant", "n", "missing", "'ab'", "'a%'", "3", "TRUE"])


def _grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(inner, st.sampled_from(["AND", "OR", "=", "+", "<", "/"]), inner)
    return st.one_of(
        binary.map(" ".join),
        inner.map(lambda x: f"NOT {x}"),
        inner.map(lambda x: f"({x})"),
        st.tuples(inner, short_text.filter(lambda t: "'" not in t)).map(
            lambda p: f"{p[0]} LIKE '{p[1]}'"
        ),
        st.lists(inner, min_size=1, max_size=4).map(lambda xs: f"CONCAT({', '.join(xs)})"),
        st.tuples(inner, st.lists(inner, min_size=1, max_size=3)).map(
            lambda p: f"{p[0]} IN ({', '.join(p[1])})"
        ),
        inner.map(lambda x: f"LOWER({x})"),
        st.tuples(inner, st.integers(-3, 5)).map(lambda p: f"SUBSTRING({p[0]}, {p[1]})"),
    )


structured = st.recursive(atoms, _grow, max_leaves=30)
expressions = st.one_of(structured, token_soup, st.text(max_size=30))

# -- patterns and filters --------------------------------------------------------------------

conditions = st.one_of(
    scalars,
    st.fixed_dictionaries({"prefix": st.one_of(short_text, st.just({"equals-ignore-case": "A"}))}),
    st.fixed_dictionaries({"suffix": short_text}),
    st.fixed_dictionaries({"wildcard": short_text}),
    st.fixed_dictionaries({"equals-ignore-case": short_text}),
    st.fixed_dictionaries({"anything-but": st.one_of(scalars, st.lists(scalars, max_size=3))}),
    st.fixed_dictionaries({"anything-but": st.fixed_dictionaries({"wildcard": short_text})}),
    st.fixed_dictionaries({"numeric": st.lists(st.one_of(st.sampled_from(["<", ">="]), scalars))}),
    st.fixed_dictionaries({"exists": st.one_of(st.booleans(), scalars)}),
    st.fixed_dictionaries({"cidr": st.sampled_from(["10.0.0.0/8", "::/0", "bad"])}),
    st.fixed_dictionaries({"unknown": scalars}),
)
valid_conditions = st.one_of(
    short_text,
    st.integers(0, 9),
    st.fixed_dictionaries({"prefix": short_text}),
    st.fixed_dictionaries({"wildcard": short_text.filter(lambda t: "**" not in t)}),
    st.fixed_dictionaries({"equals-ignore-case": short_text}),
    st.fixed_dictionaries({"anything-but": short_text}),
    st.fixed_dictionaries({"numeric": st.just([">", 1])}),
    st.fixed_dictionaries({"exists": st.booleans()}),
)
value_lists = st.one_of(
    st.lists(valid_conditions, min_size=1, max_size=4),
    st.lists(conditions, max_size=4),
)


def _nested_pattern(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, min_size=1, max_size=3),
        st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, min_size=1, max_size=3),
        st.fixed_dictionaries({"$or": st.lists(inner, min_size=1, max_size=3)}),
    )


data_patterns = st.one_of(
    st.recursive(value_lists, _nested_pattern, max_leaves=12),
    st.recursive(value_lists | junk, lambda inner: _nested_pattern(inner) | junk, max_leaves=12),
)
patterns = st.one_of(
    st.dictionaries(names, st.one_of(value_lists, data_patterns), max_size=3),
    st.fixed_dictionaries({"data": data_patterns}),
    junk,
)

valid_names = st.sampled_from(["type", "subject", "id", "time", "tenant", "n"])
leaf_filters = st.one_of(
    st.builds(
        lambda kind, body: {kind: body},
        st.sampled_from(["exact", "prefix", "suffix"]),
        st.dictionaries(valid_names, short_text.filter(bool), min_size=1, max_size=2),
    ),
    st.builds(lambda kind, body: {kind: body}, st.sampled_from(["exact", "prefix"]), junk),
    structured.map(lambda source: {"sql": source}),
    expressions.map(lambda source: {"sql": source}),
    patterns.map(lambda pattern: {"pattern": pattern}),
    data_patterns.map(lambda pattern: {"pattern": {"data": pattern}}),
)


def _nest_filters(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"all": xs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"any": xs}),
        inner.filter(lambda x: isinstance(x, dict)).map(lambda x: {"not": x}),
        st.lists(inner, max_size=3),
    )


filters = st.one_of(
    st.recursive(leaf_filters, _nest_filters, max_leaves=20),
    st.recursive(leaf_filters | junk, lambda inner: _nest_filters(inner) | junk, max_leaves=20),
)


def _deep(levels: int, leaf: Any) -> Any:
    spec = leaf
    for _ in range(levels):
        spec = {"not": spec}
    return spec


deep_filters = st.builds(_deep, st.integers(0, 400), leaf_filters)

events = events_st.events(alphabet=st.sampled_from("ab%_/.X ß0"))


def _cost(evaluate: Callable[[Event], Any], event: Event) -> tuple[Any, float]:
    """The answer of ``evaluate(event)`` and the least time of up to three runs, with
    the garbage collector paused: what the evaluation costs, not a pause of this
    process or the machine that happened to fall inside one run."""
    best = math.inf
    answer: Any = None
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(3):
            start = time.perf_counter()
            answer = evaluate(event)
            best = min(best, time.perf_counter() - start)
            if best < CAP:
                break
    finally:
        if enabled:
            gc.enable()
    return answer, best


def _timed_bool(keep: Any, event: Event) -> None:
    answer, elapsed = _cost(keep, event)
    assert type(answer) is bool
    assert elapsed < CAP, f"one evaluation took {elapsed * 1000:.1f} ms"


@FUZZ
@given(spec=st.one_of(filters, deep_filters), limits=st.sampled_from([SMALL, FilterLimits()]))
def test_any_filter_spec_compiles_or_is_a_config_error(spec: Any, limits: FilterLimits) -> None:
    """Compiling raises only ConfigError; a compiled filter returns a bool on any event."""
    try:
        keep, _ = compile_pipeline(spec, None, limits=limits)
    except ConfigError:
        return
    if keep is None:
        return
    for event in SAMPLE_EVENTS:
        _timed_bool(keep, event)


@FUZZ
@given(spec=filters, event=events)
def test_compiled_filters_answer_random_events(spec: Any, event: Event) -> None:
    """Every compiled filter answers a random event with a bool, in at most a few ms."""
    try:
        keep, _ = compile_pipeline(spec, None, limits=SMALL)
    except ConfigError:
        return
    if keep is not None:
        _timed_bool(keep, event)


@FUZZ
@given(source=expressions, event=events, limits=st.sampled_from([SMALL, FilterLimits()]))
def test_any_cesql_text_parses_or_is_a_parse_error(
    source: str, event: Event, limits: FilterLimits
) -> None:
    """cesql.compile raises only ParseError; evaluate never raises and meets no internal error."""
    try:
        expression = cesql.compile(source, limits=limits)
    except cesql.ParseError:
        return
    result, elapsed = _cost(expression.evaluate, event)
    assert type(result.value) in (bool, int, str)
    internal = [e for e in result.errors if e.kind == "generic" and "limits." not in e.message]
    assert not internal, internal  # a generic error is a limit met, never a failure
    assert elapsed < CAP
    _timed_bool(expression.matches, event)


@FUZZ
@given(
    pattern=st.one_of(
        st.fixed_dictionaries({"subject": st.lists(conditions, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"data": data_patterns}),
    ),
    event=events,
)
def test_any_pattern_compiles_or_is_a_config_error(pattern: Any, event: Event) -> None:
    """Content patterns, nested and with every operator: ConfigError or a bool, fast."""
    try:
        keep, _ = compile_pipeline({"pattern": pattern}, None, limits=SMALL)
    except ConfigError:
        return
    assert keep is not None
    _timed_bool(keep, event)


SAMPLE_EVENTS = [
    Event(type="t", source="/s"),
    Event(
        type="com.example.order",
        source="/shop",
        subject="orders/" + "a" * 2000,
        data={"a": [[{"b": "x" * 1000}]] * 50, "c": list(range(500))},
        extensions={"tenant": "acme", "n": 5},
    ),
    Event(
        type="x", source="/s", subject="ab%_" * 1000, datacontenttype="application/json", data=b"[1"
    ),
]
