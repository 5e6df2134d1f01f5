"""Hostile specs and events from the pipeline review: each was cheap to send and costly,
or crashing, to receive. The tests assert on what was refused, counted or built (memory
peaks with tracemalloc), never on wall-clock time.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import anyio
import msgspec
import pytest

import eventmesh
from eventmesh.errors import ConfigError, PipelineError
from eventmesh.event import Event, decode_json
from eventmesh.pipeline import cesql, compile_pattern, compile_pipeline
from eventmesh.pipeline.limits import FilterLimits


def _event(
    subject: str = "orders/42",
    data: Any = None,
    datacontenttype: str | None = None,
    **extensions: Any,
) -> Event:
    return Event(
        type="com.example.test",
        source="/tests",
        subject=subject,
        data=data,
        datacontenttype=datacontenttype,
        extensions=extensions,
    )


def _peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """What ``fn`` returns or raises, and the most memory it held at once, in bytes."""
    tracemalloc.start()
    try:
        try:
            result: Any = fn()
        except Exception as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


# -- CESQL: what string functions build, and what errors cost -----------------------------


def test_concat_ws_counts_its_separator_between_every_two_arguments() -> None:
    """A 60,000-character separator between 500 arguments is refused unbuilt (30 MB before)."""
    separator = "CONCAT_WS(CONCAT(type, '" + "x" * 410 + "'), " + ", ".join(["'1'"] * 147) + ")"
    source = f"CONCAT_WS({separator}, " + ", ".join(["'1'"] * 500) + ") = 'x'"
    expression = cesql.compile(source)
    event = _event()
    expression.evaluate(event)  # warm: what is made once is not what one evaluation costs
    result, peak = _peak(lambda: expression.evaluate(event))
    assert result.value is False
    assert [e.kind for e in result.errors] == ["functionEvaluation"]
    built = (len("com.example.test") + 410) * 146 + 147  # the inner CONCAT_WS, built
    assert f"would read or build {built * 499 + 500} characters" in result.errors[0].message
    assert peak < 2 * 1024 * 1024


def test_concat_ws_within_max_string_is_built() -> None:
    """The separator is counted once per gap: exactly max_string characters still build."""
    limits = FilterLimits(max_string=9)
    fits = cesql.compile("CONCAT_WS('abc', 'x', 'y', 'z') = 'xabcyabcz'", limits=limits)
    assert fits.evaluate(_event()) == cesql.Result(True)
    over = cesql.compile("CONCAT_WS('abcd', 'x', 'y', 'z') = ''", limits=limits)
    assert "would read or build 11 characters" in over.evaluate(_event()).errors[0].message


def test_a_constant_expression_that_fails_is_computed_once() -> None:
    """A constant UPPER over max_string fails once, when compiled, not on every event."""
    # 32,919 characters; UPPER makes 65,619 of them (each 'ß' is 'SS'), 83 over the limit
    built = "CONCAT_WS('" + "ß" * 300 + "\U0001f600', " + ", ".join(["'1'"] * 110) + ")"
    expression = cesql.compile(f"UPPER({built}) = ''")
    event = _event()
    first = expression.evaluate(event)
    assert [e.kind for e in first.errors] == ["functionEvaluation"]
    assert "UPPER would read or build 65619 characters" in first.errors[0].message
    result, peak = _peak(lambda: expression.evaluate(event))
    assert result == first
    assert expression.matches(event) is False
    assert peak < 64 * 1024  # 262 KB when the four-byte characters were built per event


def test_errors_of_many_operands_are_capped() -> None:
    """150 missing attributes in a call or an IN list report the first 100 errors."""
    names = [f"a{i}" for i in range(150)]
    call = cesql.compile("CONCAT(" + ", ".join(names) + ") = ''").evaluate(_event())
    assert len(call.errors) == 100
    assert call.errors[0].kind == "missingAttribute"
    assert "'a0'" in call.errors[0].message
    member = cesql.compile("missing IN (" + ", ".join(names) + ")").evaluate(_event())
    assert (member.value, len(member.errors)) == (False, 100)
    assert len(cesql.compile("CONCAT(a1, a2) = ''").evaluate(_event()).errors) == 2


# -- searches: charged as what str.find may do ---------------------------------------------

NEEDLE = "a" * 61 + "baa"
"""64 characters that make CPython's search compare most of them at every position."""


@pytest.mark.parametrize("condition", [{"wildcard": f"*{NEEDLE}*"}, {"wildcard": f"x*{NEEDLE}*"}])
def test_a_wildcard_is_charged_for_the_length_of_what_it_looks_for(condition: Any) -> None:
    """A 64-character piece costs nine times a short one: 29,000 characters take 4,087 steps."""
    limits = FilterLimits(max_steps=1000)
    value = "x" + "a" * 29_000 + NEEDLE
    long_piece = compile_pattern({"data": {"v": [condition]}}, where="p", limits=limits)
    assert long_piece(_event(data={"v": value})) is False  # out of steps: 454 before
    assert compile_pattern({"data": {"v": [condition]}}, where="p")(_event(data={"v": value}))
    short = compile_pattern({"data": {"v": [{"wildcard": "*baa*"}]}}, where="p", limits=limits)
    assert short(_event(data={"v": value})) is True  # 454 steps, as before
    excluded = compile_pattern(
        {"data": {"v": [{"anything-but": condition}]}}, where="p", limits=limits
    )
    assert excluded(_event(data={"v": "a" * 29_000})) is False  # out of steps: no match


def test_a_search_of_a_long_string_is_charged_once_per_character() -> None:
    """From LINEAR_FROM characters on str.find is linear whatever it looks for: a long
    piece over a 1 MB string is charged as a short one and still matches (16,385 steps
    of the default 100,000), as LIKE reads it up to its share of max_scan."""
    value = "a" * 1_000_000 + NEEDLE
    for condition in ({"wildcard": f"*{NEEDLE}*"}, {"wildcard": f"x*{NEEDLE}*"}):
        pattern = compile_pattern({"data": {"v": [condition]}}, where="p")
        assert pattern(_event(data={"v": ("x" if "x*" in condition["wildcard"] else "") + value}))
    limits = FilterLimits(max_string=100_000, max_scan=100_000)
    like = cesql.compile(f"subject LIKE '%{NEEDLE}%'", limits=limits)
    assert like.matches(_event("a" * 40_000 + NEEDLE)) is True
    unreadable = like.evaluate(_event("a" * 20_000 + NEEDLE))  # weighed: over its share
    assert unreadable.value is False
    assert [e.kind for e in unreadable.errors] == ["generic"]


def test_a_like_is_weighed_by_the_length_of_what_it_looks_for() -> None:
    """LIKE '%<64 characters>%' reads a ninth of what LIKE '%x%' may: an error at 2,000."""
    limits = FilterLimits(max_string=10_000, max_scan=10_000)
    value = "a" * 2000 + NEEDLE
    long_piece = cesql.compile(f"subject LIKE '%{NEEDLE}%'", limits=limits).evaluate(_event(value))
    assert long_piece.value is False
    assert [e.kind for e in long_piece.errors] == ["generic"]
    assert "at most 1111 characters" in long_piece.errors[0].message
    assert cesql.compile(f"subject LIKE '%{NEEDLE}%'").matches(_event(value)) is True
    assert cesql.compile("subject LIKE '%baa%'", limits=limits).matches(_event(value)) is True


# -- transforms: what a chain may add to an event -------------------------------------------


def _blow_up() -> list[dict[str, Any]]:
    """A template of a thousand copies of the data, then the result copied 165 times."""
    copies = {f"e{i}": {"from": "$.data"} for i in range(165)}
    template = {"variables": {"a": "$.data"}, "template": "${a}" * 1000}
    return [{"template": template}, {"set": copies}]


def test_a_transform_chain_adds_at_most_max_render_characters() -> None:
    """1 KB rendered to 1 MB and copied into 165 extensions fails the set (166 MB before)."""
    _, change = compile_pipeline(None, _blow_up(), where="t")
    assert change is not None
    event = _event(data="x" * 1000, datacontenttype="text/plain")
    with pytest.raises(PipelineError, match=r"limits\.filters\.max_render") as raised:
        change(event)
    assert raised.value.step == "t.transform[1].set"
    assert "would copy 1000000 characters, more than the 48576 left" in str(raised.value)
    small = change(_event(data="x", datacontenttype="text/plain"))
    assert small is not None
    assert small.extensions["e164"] == "x" * 1000


def test_set_from_the_event_counts_what_it_copies() -> None:
    """A 600,000-character value copies once into an extension; twice is over max_render."""
    value = "v" * 600_000
    _, once = compile_pipeline(None, [{"set": {"copy": {"from": "$.data.s"}}}])
    assert once is not None
    copied = once(_event(data={"s": value}))
    assert copied is not None
    assert copied.extensions["copy"] == value
    twice = [{"set": {"copy": {"from": "$.data.s"}}}, {"set": {"again": {"from": "$.data.s"}}}]
    _, change = compile_pipeline(None, twice, where="t")
    assert change is not None
    with pytest.raises(PipelineError, match=r"'again' would copy 600000 characters") as raised:
        change(_event(data={"s": value}))
    assert raised.value.step == "t.transform[1].set"


@pytest.mark.anyio
async def test_a_transform_over_max_render_dead_letters_the_event() -> None:
    """The blown-up transform sends the event to the dead letters, naming the limit."""

    async def handler(event: Event) -> None:
        raise AssertionError("must not be called")

    async with eventmesh.connect() as mesh:
        async with mesh.subscribe("o", "g", handler=handler, transform=_blow_up()) as sub:
            await mesh.publish("o", _event(data="x" * 1000, datacontenttype="text/plain"))
            with anyio.fail_after(5):
                while not sub.stats.dead_lettered:
                    await anyio.sleep(0.01)
        async with mesh.subscribe("o.dlq", "ops", start="earliest") as dlq:
            async for delivery in dlq:
                extensions = delivery.event.extensions
                assert extensions["deadletterreason"] == "transform"
                assert "limits.filters.max_render" in str(extensions["deadlettererror"])
                assert delivery.event.extensions == extensions  # the event as read
                assert "e0" not in extensions
                break


def test_template_variables_stop_rendering_at_max_render() -> None:
    """40 variables of a 1 MB value fail after the second is glanced at, not all rendered."""
    variables = {f"v{i}": "$.data.k" for i in range(40)}
    template = {"variables": variables, "template": "".join(f"${{{name}}}" for name in variables)}
    _, change = compile_pipeline(None, [{"template": template}], where="t")
    assert change is not None
    event = _event(data={"k": ["x" * 1000] * 1000})
    raised, peak = _peak(lambda: change(event))
    assert isinstance(raised, PipelineError)
    assert "would render more than limits.filters.max_render (1048576)" in str(raised)
    assert peak < 5 * 1024 * 1024  # one rendered value, where 40 were before


def test_template_variables_are_measured_before_they_are_built() -> None:
    """Long strings and bytes are refused by their length; they are never copied."""
    limits = FilterLimits(max_render=100)
    for data in ({"s": "y" * 200}, {"s": ["y" * 200]}):
        template = {"variables": {"s": "$.data.s"}, "template": "[${s}]"}
        _, change = compile_pipeline(None, [{"template": template}], limits=limits)
        assert change is not None
        with pytest.raises(PipelineError, match=r"more than limits\.filters\.max_render \(100\)"):
            change(_event(data=data))
    _, binary = compile_pipeline(
        None, [{"template": {"variables": {"b": "$.data"}, "template": "${b}"}}], limits=limits
    )
    assert binary is not None
    with pytest.raises(PipelineError, match=r"max_render"):
        binary(_event(data=b"\x00" * 76))  # 104 characters as base64
    fits = binary(_event(data=b"\x00" * 75))  # exactly 100
    assert fits is not None
    assert fits.data == "A" * 100


def test_a_template_renders_no_data_deeper_than_the_bindings_read() -> None:
    """'[' x 900 rendered as JSON fails the step: no binding could encode the result."""
    deep = "[" * 900 + "]" * 900
    _, change = compile_pipeline(None, [{"template": {"template": deep}}], where="t")
    assert change is not None
    with pytest.raises(PipelineError, match=r"EventValidationError: .*more than 64 deep"):
        change(_event(datacontenttype="application/json"))
    assert change(_event(datacontenttype="text/plain")) is not None  # text: not decoded
    very = {"variables": {"s": "$.data.s"}, "template": "${s}"}
    _, from_data = compile_pipeline(None, [{"template": very}], where="t")
    assert from_data is not None
    with pytest.raises(PipelineError, match=r"EventValidationError: .*deep"):
        from_data(_event(data={"s": "[" * 5000 + "]" * 5000}))  # past the decoder's stack


# -- numbers too large to convert ------------------------------------------------------------


def _wire(spec: Any) -> Any:
    """The spec as the sidecar receives it: through JSON."""
    return msgspec.json.decode(msgspec.json.encode(spec))


def test_a_numeric_bound_of_hundreds_of_digits_compiles_and_compares() -> None:
    """['>', 10**400] is a number: compared exactly, not converted to a float (OverflowError)."""
    spec = _wire({"pattern": {"data": {"x": [{"numeric": [">", 10**400]}]}}})
    keep, _ = compile_pipeline(spec, None)
    assert keep is not None
    assert keep(_event(data={"x": 10**401})) is True
    assert keep(_event(data={"x": 5.0})) is False


def test_an_exact_extension_of_thousands_of_digits_is_a_string() -> None:
    """An exact value of 5,000 digits is no 32-bit integer; int() of it raised ValueError."""
    digits = "1" * 5000
    keep, _ = compile_pipeline({"exact": {"myext": digits}}, None)
    assert keep is not None
    assert keep(_event(myext=digits)) is True
    assert keep(_event(myext="1")) is False


@pytest.mark.parametrize("literal", ["1" * 5000, "-" + "1" * 5000, "0" * 5000 + "12345678901"])
def test_a_cesql_literal_of_thousands_of_digits_is_a_config_error(literal: str) -> None:
    """A literal over 4,300 digits is outside 32 bits: a short ParseError, not ValueError."""
    with pytest.raises(ConfigError, match=r"^x\.filter\.sql: .*outside the 32-bit range") as raised:
        compile_pipeline({"sql": f"a = {literal}"}, None, where="x")
    assert len(str(raised.value)) < 300
    keep, _ = compile_pipeline({"sql": "a = " + "0" * 5000 + "7"}, None)
    assert keep is not None
    assert keep(_event(a=7)) is True


def test_a_jsonpath_index_of_thousands_of_digits_is_a_config_error() -> None:
    """$.data[999...] names the index and the path; it is no array's length."""
    steps = [{"set": {"subject": {"from": "$.data[" + "9" * 5000 + "]"}}}]
    with pytest.raises(ConfigError, match=r"^x\.transform\[0\]\.set\.subject\.from: .*7 has 5000"):
        compile_pipeline(None, steps, where="x")


class _Unreadable(Mapping[str, Any]):
    """A spec whose reading raises what no compiler expects."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getitem__(self, key: str) -> Any:
        raise self.error

    def __iter__(self) -> Iterator[str]:
        raise self.error

    def __len__(self) -> int:
        return 1


@pytest.mark.parametrize("error", [ValueError("bad"), OverflowError("too large")])
def test_compile_pipeline_turns_unforeseen_errors_into_config_errors(error: Exception) -> None:
    """ValueError or OverflowError out of a compiler is a ConfigError naming filter or transform."""
    with pytest.raises(ConfigError, match=rf"^s\.filter: .*{type(error).__name__}"):
        compile_pipeline({"all": [_Unreadable(error)]}, None, where="s")
    with pytest.raises(ConfigError, match=rf"^s\.transform: .*{type(error).__name__}"):
        compile_pipeline(None, [{"constant": _Unreadable(error)}], where="s")


# -- data that cannot be decoded ---------------------------------------------------------------


def test_a_pattern_treats_json_text_nested_past_the_stack_as_unreadable() -> None:
    """JSON text 5,000 deep in a string: data a pattern cannot read, not a RecursionError."""
    body = msgspec.json.encode(
        {
            "specversion": "1.0",
            "id": "1",
            "source": "/s",
            "type": "t",
            "datacontenttype": "application/json",
            "data": "[" * 5000 + "]" * 5000,
        }
    )
    event = decode_json(body)
    assert compile_pattern({"data": {"x": ["y"]}}, where="p")(event) is False
    assert compile_pattern({"data": {"x": [{"exists": False}]}}, where="p")(event) is True
    _, change = compile_pipeline(None, [{"set": {"subject": {"from": "$.data.x"}}}])
    assert change is not None
    changed = change(event)
    assert changed is not None
    assert changed.subject is None


def test_templates_that_replace_the_data_each_render_up_to_max_render() -> None:
    """A template replaces the data, so two that each wrap 600 KB of it (or a set that
    copies a field and a template that renders it) make no event larger than one would:
    each may render max_render, and the chain passes events of max_event_size."""
    blob = "b" * 600_000
    wrap = {"variables": {"d": "$.data"}, "template": '{"wrapped": ${d}}'}
    chain = [{"template": wrap}] * 2
    _, twice = compile_pipeline(None, chain, where="t")
    assert twice is not None
    wrapped = twice(_event(data={"blob": blob}))
    assert wrapped is not None
    assert wrapped.data == {"wrapped": {"wrapped": {"blob": blob}}}
    copy_then_render = [
        {"set": {"subject": {"from": "$.data.blob"}}},
        {"template": {"variables": {"s": "$.subject"}, "template": "${s}"}},
    ]
    _, change = compile_pipeline(None, copy_then_render, where="t")
    assert change is not None
    rendered = change(_event(data={"blob": blob}, datacontenttype="text/plain"))
    assert rendered is not None
    assert rendered.subject == blob
    assert rendered.data == blob


@pytest.mark.parametrize(
    "step",
    [
        {"set": {"replyto": {"from": "$.data.inbox"}}},
        {"set": {"correlationid": "victim-42"}},
        {"rename": {"x": "replyto"}},
        {"rename": {"x": "correlationid"}},
    ],
)
def test_a_transform_cannot_choose_where_replies_go(step: Any) -> None:
    """replyto and correlationid say which reply inbox a handler's replies go to and
    which request they answer: only the publisher may set them (with publish on that
    inbox). A subscription's transform that set them answered another caller's request
    (a review, helper-55)."""
    with pytest.raises(ConfigError, match="where a handler's replies go") as refused:
        compile_pipeline(None, [step], where="t")
    assert refused.value.key.startswith("t.transform[0]")
    _, removing = compile_pipeline(None, [{"remove": ["replyto"]}], where="t")
    assert removing is not None
