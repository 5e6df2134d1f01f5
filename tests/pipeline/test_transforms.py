"""Transform chains: original, constant, template, set, rename, remove, call, and their errors."""

from __future__ import annotations

import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventmesh.errors import ConfigError, EventValidationError, PipelineError
from eventmesh.event import Event
from eventmesh.pipeline.transforms import STEP_KINDS, compile_transforms
from eventmesh.typing import Transform

ORDER = Event(
    type="com.example.order.created",
    source="/shop/eu",
    id="order-42",
    subject="orders/42",
    time=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    datacontenttype="application/json",
    extensions={"tenant": "acme", "priority": 5},
    data={
        "customer": {"id": "c-7", "name": "Ann", "vip": True},
        "amount": 150,
        "lines": [{"sku": "a"}, {"sku": "b"}],
        "note": None,
    },
)

STEPS_MODULE = """
from eventmesh.event import Event

def drop(event):
    return None

def tag(event):
    return event.replace(extensions={**event.extensions, "tagged": True})

def boom(event):
    raise RuntimeError("no stock for " + event.subject)

def wrong(event):
    return 42

async def later(event):
    return event

not_callable = 5
"""


@pytest.fixture
def steps_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real module of transform functions on sys.path; returns its name."""
    name = "eventmesh_test_steps"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(STEPS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def _compile(*steps: Any) -> Transform:
    transform = compile_transforms(list(steps), where="subscriptions[0].transform")
    assert transform is not None
    return transform


def _apply(*steps: Any, event: Event = ORDER) -> Event:
    result = _compile(*steps)(event)
    assert result is not None
    return result


# -- the chain ---------------------------------------------------------------------------


def test_no_steps_is_no_transform() -> None:
    """None, an empty list and a chain of 'original' steps compile to None."""
    assert compile_transforms(None, where="t") is None
    assert compile_transforms([], where="t") is None
    assert compile_transforms([{"original": {}}, {"original": None}], where="t") is None


def test_original_keeps_the_event() -> None:
    """'original' changes nothing, also inside a chain."""
    result = _apply({"original": {}}, {"set": {"subject": "x"}})
    assert result.data == ORDER.data
    assert result.subject == "x"


def test_steps_run_in_order() -> None:
    """Each step sees the event the previous step returned."""
    result = _apply(
        {"constant": {"n": 1}},
        {"template": {"variables": {"n": "$.data.n"}, "template": '{"n": ${n}, "m": 2}'}},
    )
    assert result.data == {"n": 1, "m": 2}


# -- constant and template ---------------------------------------------------------------


def test_constant_replaces_data() -> None:
    """'constant' sets data to the given JSON value and keeps the attributes."""
    result = _apply({"constant": {"status": "archived", "codes": [1, 2]}})
    assert result.data == {"status": "archived", "codes": [1, 2]}
    assert result.id == ORDER.id
    assert _apply({"constant": "plain text"}).data == "plain text"
    assert _apply({"constant": 7}).data == 7


def test_constant_data_is_not_shared_between_events() -> None:
    """A handler changing one event's constant data does not change the next event's."""
    transform = _compile({"constant": {"items": []}})
    first = transform(ORDER)
    assert first is not None
    first.data["items"].append("x")
    second = transform(ORDER)
    assert second is not None
    assert second.data == {"items": []}


def test_template_renders_variables_into_json() -> None:
    """Variables bound by JSONPath render into the template; JSON output is parsed."""
    result = _apply(
        {
            "template": {
                "variables": {
                    "name": "$.data.customer.name",
                    "amount": "$.data.amount",
                    "vip": "$.data.customer.vip",
                    "sku": "$.data.lines[1].sku",
                    "last": "$.data.lines[-1]",
                    "type": "$.type",
                    "tenant": "$.tenant",
                    "time": "$.time",
                    "label": "fixed",
                },
                "template": (
                    '{"who": "${name}", "amount": ${amount}, "vip": ${vip}, "sku": "${sku}", '
                    '"last": ${last}, "type": "${type}", "tenant": "${tenant}", '
                    '"time": "${time}", "label": "${label}"}'
                ),
            }
        }
    )
    assert result.data == {
        "who": "Ann",
        "amount": 150,
        "vip": True,
        "sku": "b",
        "last": {"sku": "b"},
        "type": "com.example.order.created",
        "tenant": "acme",
        "time": "2024-05-01T12:00:00Z",
        "label": "fixed",
    }


def test_template_misses_render_as_null() -> None:
    """A path that finds nothing, or finds null, renders as null."""
    result = _apply(
        {
            "template": {
                "variables": {"a": "$.data.nope", "b": "$.data.note", "c": "$.dataschema"},
                "template": '{"a": ${a}, "b": ${b}, "c": ${c}}',
            }
        }
    )
    assert result.data == {"a": None, "b": None, "c": None}
    text = _apply({"template": {"variables": {"x": "$.data.lines[9]"}, "template": "x is ${x}"}})
    assert text.data == "x is null"


def test_template_output_that_is_not_json_stays_text() -> None:
    """Rendered text that is not valid JSON, or under a non-JSON type, is a string."""
    step = {"template": {"variables": {"n": "$.data.customer.name"}, "template": "Hi ${n}!"}}
    assert _apply(step).data == "Hi Ann!"
    as_text = ORDER.replace(datacontenttype="text/plain")
    numeric = {"template": {"variables": {"a": "$.data.amount"}, "template": "${a}"}}
    assert _apply(numeric, event=as_text).data == "150"
    assert _apply(numeric).data == 150


def test_template_escapes_and_reads_decoded_json_data() -> None:
    """$${ is a literal ${, and JSON bytes data is read as JSON."""
    event = ORDER.replace(data=b'{"k": "v"}')
    result = _apply(
        {"template": {"variables": {"k": "$.data.k"}, "template": "$${k}=${k}"}}, event=event
    )
    assert result.data == "${k}=v"


# -- set, rename, remove -----------------------------------------------------------------


def test_set_literals_and_values_from_the_event() -> None:
    """'set' sets context attributes and extensions, literally or from a JSONPath."""
    result = _apply(
        {
            "set": {
                "subject": "customers",
                "region": "eu",
                "customer": {"from": "$.data.customer.id"},
                "amount": {"from": "$.data.amount"},
                "dataschema": {"from": "$.data.nope", "default": "urn:schema:none"},
                "time": "2024-06-01T00:00:00Z",
            }
        }
    )
    assert result.subject == "customers"
    assert result.extensions == {
        "tenant": "acme",
        "priority": 5,
        "region": "eu",
        "customer": "c-7",
        "amount": 150,
    }
    assert result.dataschema == "urn:schema:none"
    assert result.time == datetime(2024, 6, 1, tzinfo=UTC)


def test_set_converts_values_to_what_the_attribute_holds() -> None:
    """A number read into a string attribute becomes its JSON text; a miss unsets."""
    result = _apply({"set": {"subject": {"from": "$.data.amount"}, "tenant": {"from": "$.x"}}})
    assert result.subject == "150"
    assert "tenant" not in result.extensions


def test_set_of_a_required_attribute_from_a_miss_fails() -> None:
    """A path that finds nothing cannot unset a required attribute: the step fails."""
    transform = _compile({"set": {"type": {"from": "$.data.kind"}}})
    with pytest.raises(PipelineError) as caught:
        transform(ORDER)
    assert caught.value.step == "subscriptions[0].transform[0].set"


def test_rename_moves_extensions_and_optional_attributes() -> None:
    """'rename' moves values between names at once, so two names can swap."""
    result = _apply({"rename": {"tenant": "org", "priority": "tenant", "subject": "topic"}})
    assert result.extensions == {"org": "acme", "tenant": 5, "topic": "orders/42"}
    assert result.subject is None
    untouched = _apply({"rename": {"absent": "other"}})
    assert untouched.extensions == ORDER.extensions


def test_remove_unsets_extensions_and_optional_attributes() -> None:
    """'remove' drops extensions and optional context attributes."""
    result = _apply({"remove": ["tenant", "subject", "time", "absent"]})
    assert result.extensions == {"priority": 5}
    assert result.subject is None
    assert result.time is None


# -- call and dropping -------------------------------------------------------------------


def test_call_runs_a_python_function(steps_module: str) -> None:
    """'call' imports a function at compile time and uses the event it returns."""
    result = _apply({"call": f"{steps_module}:tag"})
    assert result.extensions["tagged"] is True


def test_a_step_returning_none_drops_the_event(steps_module: str) -> None:
    """A function returning None drops the event and the rest of the chain does not run."""
    transform = _compile({"call": f"{steps_module}:drop"}, {"call": f"{steps_module}:boom"})
    assert transform(ORDER) is None


def test_a_failing_step_raises_pipeline_error_naming_it(steps_module: str) -> None:
    """An exception in a step becomes PipelineError with the step path, chained to the cause."""
    transform = _compile(
        {"set": {"region": "eu"}},
        {"original": {}},
        {"call": f"{steps_module}:boom"},
        {"call": f"{steps_module}:tag"},
    )
    with pytest.raises(PipelineError) as caught:
        transform(ORDER)
    assert caught.value.step == "subscriptions[0].transform[2].call"
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert "no stock for orders/42" in str(caught.value)


def test_a_function_returning_something_else_fails(steps_module: str) -> None:
    """A call step must return an Event or None."""
    with pytest.raises(PipelineError, match="returned int, not an Event or None") as caught:
        _compile({"call": f"{steps_module}:wrong"})(ORDER)
    assert isinstance(caught.value.__cause__, TypeError)


def test_an_invalid_result_fails_validation() -> None:
    """Every change goes through Event.replace, so an invalid result is a step error."""
    transform = _compile({"set": {"time": {"from": "$.data.customer.name"}}})
    with pytest.raises(PipelineError) as caught:
        transform(ORDER)
    assert isinstance(caught.value.__cause__, EventValidationError)
    assert caught.value.step == "subscriptions[0].transform[0].set"


# -- compile errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ({"constant": 1}, "subscriptions[0].transform: expected a list of transform steps"),
        ([{"frobnicate": {}}], "transform[0]: unknown transform step 'frobnicate'; known: call"),
        ([{"set": {}, "remove": []}], "transform[0]: a transform step is a mapping naming one"),
        ([{"original": {"x": 1}}], "transform[0].original: 'original' takes no options"),
        (
            [{"constant": {"x": object()}}],
            "transform[0].constant: the constant is not a JSON value",
        ),
        ([{"template": "x"}], "transform[0].template: expected {'template'"),
        ([{"template": {"template": "${x}"}}], "template.template: the template uses ${x}"),
        ([{"template": {"template": "a ${b"}}], "template.template: unclosed '${'"),
        ([{"template": {"template": "x", "vars": {}}}], "unknown key(s) 'vars'"),
        (
            [{"template": {"template": "${x}", "variables": {"x": "$.data[*]"}}}],
            "template.variables.x: JSONPath '$.data[*]' is not supported at column 7",
        ),
        ([{"template": {"template": "${x}", "variables": {"x": "$[0]"}}}], "an event is an object"),
        ([{"set": {"Subject": "x"}}], "transform[0].set: 'Subject' is not an attribute name"),
        ([{"set": {"data": "x"}}], "'data' is not an attribute; change the data with"),
        ([{"set": {"specversion": "2.0"}}], "'specversion' is always '1.0'"),
        ([{"set": {"type": ""}}], "transform[0].set.type: attribute 'type' must be a non-empty"),
        ([{"set": {"type": None}}], "the required attribute 'type' cannot be unset"),
        (
            [{"set": {"time": "yesterday"}}],
            "transform[0].set.time: attribute 'time' is 'yesterday'",
        ),
        ([{"set": {"big": 2**40}}], "transform[0].set.big: extension 'big' is 1099511627776"),
        ([{"set": {"x": {"path": "$.a"}}}], "transform[0].set.x: expected {'from': '$.path'}"),
        ([{"set": {"x": [1]}}], "transform[0].set.x: an attribute holds one value"),
        ([{"rename": {"type": "kind"}}], "'type' is a required attribute and cannot be renamed"),
        ([{"rename": {"kind": "id"}}], "'id' is a required attribute and cannot be renamed"),
        ([{"rename": {"a": "a"}}], "transform[0].rename.a: 'a' is renamed to itself"),
        ([{"rename": {"a": "c", "b": "c"}}], "two attributes are renamed to 'c'"),
        ([{"remove": ["tenant", "source"]}], "remove[1]: 'source' is a required attribute"),
        ([{"remove": {}}], "transform[0].remove: expected a list of attribute names"),
        ([{"call": 5}], "transform[0].call: expected 'package.module:function'"),
        ([{"call": "no_such_module_x:f"}], "cannot import module 'no_such_module_x'"),
        ([{"call": "json"}], "'json' must look like 'package.module:function'"),
        ([{"call": "json:nope"}], "module 'json' has no attribute 'nope'"),
    ],
)
def test_malformed_steps_name_their_path(steps: Any, message: str) -> None:
    """A malformed step raises ConfigError naming the step and the key inside it."""
    with pytest.raises(ConfigError) as caught:
        compile_transforms(steps, where="subscriptions[0].transform")
    assert message in str(caught.value)
    assert "subscriptions[0].transform" in str(caught.value)


def test_call_errors_name_the_module_and_step(steps_module: str) -> None:
    """Non-callables and async functions are rejected when compiled."""
    with pytest.raises(ConfigError, match=r"transform\[0\]\.call: .*is not callable"):
        compile_transforms([{"call": f"{steps_module}:not_callable"}], where="transform")
    with pytest.raises(ConfigError, match="async function; transforms are synchronous"):
        compile_transforms([{"call": f"{steps_module}:later"}], where="transform")


def test_an_unknown_step_lists_the_known_ones() -> None:
    """The error for an unknown step kind names every kind there is."""
    with pytest.raises(ConfigError) as caught:
        compile_transforms([{"filter": {}}], where="t")
    for kind in STEP_KINDS:
        assert kind in str(caught.value)


# -- properties --------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(value=json_values)
def test_a_lone_variable_round_trips_any_json_value(value: Any) -> None:
    """A template of just ${v} under a JSON content type reproduces the value it read.

    Strings are the exception by design: they are inserted as text, so a string that is
    itself JSON text (such as "1") comes back parsed.
    """
    event = ORDER.replace(data={"v": value})
    result = _apply({"template": {"variables": {"v": "$.data.v"}, "template": "${v}"}}, event=event)
    if not isinstance(value, str):
        assert result.data == value
