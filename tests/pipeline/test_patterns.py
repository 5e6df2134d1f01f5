"""Content patterns over attributes and data: every operator, arrays, $or and bad patterns."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventmesh.errors import ConfigError
from eventmesh.event import Event, parse_time
from eventmesh.pipeline import _jsonpath
from eventmesh.pipeline.patterns import compile_pattern

DATA: dict[str, Any] = {
    "amount": 150,
    "price": 9.5,
    "count": "5",
    "paid": True,
    "note": None,
    "country": "NL",
    "file": "reports/2024/summary.PNG",
    "ip": "10.0.0.7",
    "ip6": "2001:db8::1",
    "tags": ["vip", "eu"],
    "scores": [3, 12],
    "customer": {"tier": "gold", "address": {"city": "Utrecht"}},
    "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 7}],
}


def _event(data: Any = DATA, **fields: Any) -> Event:
    fields.setdefault("type", "com.example.order.created")
    fields.setdefault("source", "/shop/eu")
    fields.setdefault("subject", "orders/42")
    return Event(data=data, **fields)


ORDER = _event(extensions={"tenant": "acme", "priority": 5})


def _matches(pattern: dict[str, Any], event: Event = ORDER) -> bool:
    return compile_pattern(pattern, where="p")(event)


def _field(conditions: list[Any], name: str) -> bool:
    """Whether ``conditions`` match data field ``name`` of ORDER."""
    return _matches({"data": {name: conditions}})


# -- exact values ------------------------------------------------------------------------


def test_attributes_match_exact_values() -> None:
    """A top-level attribute matches when it equals any listed value."""
    assert _matches({"type": ["com.example.order.updated", "com.example.order.created"]})
    assert not _matches({"type": ["com.example.order.updated"]})
    assert _matches({"tenant": ["acme"], "priority": [5]})
    assert not _matches({"priority": ["5"]})


def test_exact_values_keep_their_json_type() -> None:
    """5 matches 5 and 5.0 but not "5"; true is not 1; null matches only null."""
    assert _field([150], "amount")
    assert _field([150.0], "amount")
    assert not _field(["150"], "amount")
    assert _field(["5"], "count")
    assert not _field([5], "count")
    assert _field([True], "paid")
    assert not _field([1], "paid")
    assert not _matches({"data": {"one": [True]}}, _event({"one": 1}))
    assert _field([None], "note")
    assert not _field([""], "note")
    assert not _field([None], "missing")


def test_fields_are_anded_and_values_ored() -> None:
    """All fields must match; any value in a field's list will do."""
    assert _matches({"type": ["com.example.order.created"], "data": {"country": ["BE", "NL"]}})
    assert not _matches({"type": ["com.example.order.created"], "data": {"country": ["BE"]}})


def test_nested_objects() -> None:
    """A nested pattern reads nested objects; a non-object there has no fields."""
    assert _matches({"data": {"customer": {"address": {"city": ["Utrecht"]}}}})
    assert not _matches({"data": {"customer": {"address": {"city": ["Delft"]}}}})
    assert not _matches({"data": {"country": {"code": ["NL"]}}})
    assert _matches({"data": {"country": {"code": [{"exists": False}]}}})


def test_the_brief_example() -> None:
    """A three-field pattern over type and data."""
    pattern = {
        "type": ["com.example.order.created"],
        "data": {"amount": [{"numeric": [">", 100]}], "country": ["NL", "BE"]},
    }
    assert _matches(pattern)
    assert not _matches(pattern, _event({"amount": 100, "country": "NL"}))
    assert not _matches(pattern, _event({"amount": 101, "country": "DE"}))


# -- operators ---------------------------------------------------------------------------


def test_prefix_and_suffix() -> None:
    """prefix/suffix match strings only, optionally ignoring case."""
    assert _field([{"prefix": "reports/"}], "file")
    assert not _field([{"prefix": "Reports/"}], "file")
    assert _field([{"prefix": {"equals-ignore-case": "REPORTS/"}}], "file")
    assert _field([{"suffix": ".PNG"}], "file")
    assert not _field([{"suffix": ".png"}], "file")
    assert _field([{"suffix": {"equals-ignore-case": ".png"}}], "file")
    assert not _field([{"prefix": "1"}], "amount")
    assert _matches({"subject": [{"prefix": "orders/"}]})


def test_anything_but() -> None:
    """anything-but matches a present value outside what it names."""
    assert _field([{"anything-but": "BE"}], "country")
    assert not _field([{"anything-but": "NL"}], "country")
    assert not _field([{"anything-but": ["BE", "NL"]}], "country")
    assert _field([{"anything-but": [100, 200]}], "amount")
    assert not _field([{"anything-but": 150}], "amount")
    assert _field([{"anything-but": 5}], "count")  # "5" is not the number 5
    assert not _field([{"anything-but": {"prefix": "rep"}}], "file")
    assert _field([{"anything-but": {"prefix": "img"}}], "file")
    assert not _field([{"anything-but": {"suffix": ".PNG"}}], "file")
    assert not _field([{"anything-but": {"equals-ignore-case": ["nl", "be"]}}], "country")
    assert not _field([{"anything-but": {"wildcard": "reports/*"}}], "file")
    assert _field([{"anything-but": {"wildcard": ["img/*", "*.jpg"]}}], "file")


def test_anything_but_never_matches_a_missing_field() -> None:
    """anything-but needs the field to be there."""
    assert not _field([{"anything-but": "x"}], "missing")


def test_anything_but_on_an_array_excludes_if_any_element_is_excluded() -> None:
    """An array matches anything-but only when none of its elements is excluded."""
    assert not _field([{"anything-but": "vip"}], "tags")
    assert _field([{"anything-but": ["internal", "test"]}], "tags")
    assert not _matches({"data": {"tags": [{"anything-but": "x"}]}}, _event({"tags": []}))


def test_numeric() -> None:
    """numeric compares JSON numbers with every listed operator."""
    assert _field([{"numeric": [">", 100]}], "amount")
    assert _field([{"numeric": [">", 100, "<=", 150]}], "amount")
    assert not _field([{"numeric": [">", 100, "<", 150]}], "amount")
    assert _field([{"numeric": ["=", 150]}], "amount")
    assert _field([{"numeric": ["=", 9.5]}], "price")
    assert _field([{"numeric": ["!=", 3]}], "amount")
    assert _field([{"numeric": [">=", 0, "<", 10, "!=", 5]}], "price")
    assert not _field([{"numeric": [">=", 0, "<", 10, "!=", 9.5]}], "price")


def test_numeric_rejects_strings_and_booleans() -> None:
    """Fixed quirk: "5" and true never satisfy a numeric condition (no coercion)."""
    assert not _field([{"numeric": ["=", 5]}], "count")
    assert not _field([{"numeric": [">", 0]}], "count")
    assert not _field([{"numeric": [">", 0]}], "paid")
    assert not _field([{"numeric": [">", 0]}], "note")
    assert not _field([{"numeric": [">", 0]}], "missing")


def test_exists() -> None:
    """exists looks at presence: null counts as present."""
    assert _field([{"exists": True}], "note")
    assert not _field([{"exists": False}], "note")
    assert _field([{"exists": False}], "missing")
    assert not _field([{"exists": True}], "missing")
    assert _field([{"exists": True}], "tags")
    assert _matches({"subject": [{"exists": True}], "dataschema": [{"exists": False}]})


def test_exists_false_or_a_value() -> None:
    """exists false ORs with other values: absent, or equal to one of them."""
    assert _field([{"exists": False}, "NL"], "country")
    assert _field([{"exists": False}, "NL"], "missing")
    assert not _field([{"exists": False}, "BE"], "country")


def test_equals_ignore_case() -> None:
    """equals-ignore-case compares strings regardless of case."""
    assert _field([{"equals-ignore-case": "nl"}], "country")
    assert not _field([{"equals-ignore-case": "n"}], "country")
    assert not _field([{"equals-ignore-case": "150"}], "amount")


@pytest.mark.parametrize(
    ("wildcard", "expected"),
    [
        ("reports/*", True),
        ("*.PNG", True),
        ("*/2024/*", True),
        ("reports/*/summary.*", True),
        ("reports/2024/summary.PNG", True),
        ("reports/*.png", False),
        ("*2025*", False),
        ("r*s*y*G", True),
        ("reports/2024", False),
    ],
)
def test_wildcard(wildcard: str, expected: bool) -> None:
    """* stands for any run of characters; the rest must match exactly."""
    assert _field([{"wildcard": wildcard}], "file") is expected


def test_wildcard_escapes() -> None:
    """\\* is a literal star and \\\\ a literal backslash."""
    event = _event({"name": "a*b\\c"})
    assert _matches({"data": {"name": [{"wildcard": "a\\*b\\\\c"}]}}, event)
    assert not _matches({"data": {"name": [{"wildcard": "a\\*b\\\\d"}]}}, event)
    assert not _matches({"data": {"name": [{"wildcard": "a\\*x*"}]}}, event)


def test_cidr() -> None:
    """cidr matches IPv4 and IPv6 address strings inside the block."""
    assert _field([{"cidr": "10.0.0.0/24"}], "ip")
    assert not _field([{"cidr": "10.0.1.0/24"}], "ip")
    assert _field([{"cidr": "2001:db8::/32"}], "ip6")
    assert not _field([{"cidr": "2001:db8::/32"}], "ip")
    assert not _field([{"cidr": "10.0.0.0/8"}], "country")
    assert not _field([{"cidr": "10.0.0.0/8"}], "amount")


# -- arrays, $or -------------------------------------------------------------------------


def test_an_array_value_matches_when_any_element_does() -> None:
    """A field holding an array matches when one of its elements matches."""
    assert _field(["eu"], "tags")
    assert not _field(["us"], "tags")
    assert _field([{"numeric": [">", 10]}], "scores")
    assert not _field([{"numeric": [">", 20]}], "scores")


def test_a_matched_array_field_does_not_skip_the_other_fields() -> None:
    """Fixed quirk: an array field that matched does not make the whole pattern match."""
    assert not _matches({"data": {"tags": ["vip"], "country": ["BE"]}})
    assert not _matches({"data": {"country": ["BE"], "tags": ["vip"]}})
    assert _matches({"data": {"tags": ["vip"], "country": ["NL"]}})


def test_a_nested_pattern_over_an_array_needs_one_element_to_match_it_all() -> None:
    """Fields of one array element are matched together, not across elements."""
    assert _matches({"data": {"lines": {"sku": ["b"], "qty": [{"numeric": [">", 5]}]}}})
    assert not _matches({"data": {"lines": {"sku": ["a"], "qty": [{"numeric": [">", 5]}]}}})


def test_or_at_the_top_level() -> None:
    """$or matches when any of its patterns does, ANDed with the other fields."""
    pattern = {
        "source": ["/shop/eu"],
        "$or": [{"tenant": ["other"]}, {"data": {"amount": [{"numeric": [">", 100]}]}}],
    }
    assert _matches(pattern)
    assert not _matches(pattern, _event({"amount": 1}, extensions={"tenant": "acme"}))
    assert _matches(pattern, _event({"amount": 1}, extensions={"tenant": "other"}))
    assert not _matches({**pattern, "source": ["/shop/us"]})


def test_or_inside_data() -> None:
    """$or inside a nested pattern reads the same object."""
    pattern = {"data": {"$or": [{"country": ["BE"]}, {"customer": {"tier": ["gold"]}}]}}
    assert _matches(pattern)
    assert not _matches(pattern, _event({"country": "NL", "customer": {"tier": "silver"}}))


# -- the data view -----------------------------------------------------------------------


def test_json_text_and_bytes_data_are_decoded() -> None:
    """Data held as JSON text or bytes under a JSON content type is matched as JSON."""
    pattern = {"data": {"amount": [{"numeric": [">", 100]}]}}
    text = json.dumps({"amount": 150})
    assert _matches(pattern, _event(text, datacontenttype="application/json"))
    assert _matches(pattern, _event(text.encode(), datacontenttype="application/cloudevents+json"))
    assert not _matches(pattern, _event(text.encode(), datacontenttype="application/octet-stream"))
    assert not _matches(pattern, _event(b"{not json", datacontenttype="application/json"))
    assert _matches({"data": [{"exists": True}]}, _event(b"\x00", datacontenttype="image/png"))


def test_string_data_matches_as_a_string() -> None:
    """A data list applies to the data value itself."""
    event = _event("hello world", datacontenttype="text/plain")
    assert _matches({"data": [{"prefix": "hello"}]}, event)
    assert _matches({"data": ["5"]}, _event("5", datacontenttype="application/json"))
    assert _matches({"data": [{"exists": False}]}, _event(None))


def test_data_is_decoded_once_per_event() -> None:
    """Several patterns over one event's JSON bytes share one decode."""
    event = _event(b'{"a": {"b": 1}}', datacontenttype="application/json")
    first = _jsonpath.json_data(event)
    assert _jsonpath.json_data(event) is first
    p1 = compile_pattern({"data": {"a": {"b": [1]}}}, where="p")
    p2 = compile_pattern(
        {"$or": [{"data": {"a": {"b": [2]}}}, {"data": {"a": [{"exists": True}]}}]}, where="p"
    )
    assert p1(event)
    assert p2(event)
    assert _jsonpath.json_data(event) is first


def test_time_is_matched_as_rfc3339_text() -> None:
    """The time attribute reads as the JSON format writes it."""
    event = Event(type="t", source="/s", time=parse_time("2024-05-01T12:00:00Z"))
    assert _matches({"time": [{"prefix": "2024-05-01T"}]}, event)
    assert _matches({"time": ["2024-05-01T12:00:00Z"]}, event)


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ({}, "sub.filter.pattern: expected a pattern"),
        ({"type": "com.example"}, "sub.filter.pattern.type: expected a list of values"),
        ({"type": {"prefix": "a"}}, "nested patterns are for 'data'"),
        ({"Type": ["a"]}, "sub.filter.pattern: 'Type' is not an attribute name"),
        ({"data": "x"}, "sub.filter.pattern.data: expected a list of values or conditions, or a"),
        ({"data": {"a": []}}, "sub.filter.pattern.data.a: expected a non-empty list"),
        ({"data": {"a": "x"}}, "sub.filter.pattern.data.a: expected a list of values"),
        ({"data": {"a": [["x"]]}}, "sub.filter.pattern.data.a[0]: expected a string, number"),
        ({"data": {"a": [{"contains": "x"}]}}, "unknown operator 'contains'; known: anything-but"),
        ({"data": {"a": [{"prefix": "x", "suffix": "y"}]}}, "a condition holds one operator"),
        ({"data": {"a": [{"numeric": [">", 1, "<"]}]}}, "data.a[0].numeric: expected operator"),
        ({"data": {"a": [{"numeric": ["~", 1]}]}}, "numeric[0]: unknown numeric operator '~'"),
        ({"data": {"a": [{"numeric": [">", "1"]}]}}, "numeric[1]: expected a number after '>'"),
        ({"data": {"a": [{"numeric": [">", True]}]}}, "expected a number after '>', got bool"),
        ({"data": {"a": [{"numeric": ">"}]}}, "expected operator and number pairs"),
        ({"data": {"a": [{"cidr": "10.0.0.300/24"}]}}, "data.a[0].cidr: '10.0.0.300/24' is not a"),
        ({"data": {"a": [{"cidr": 10}]}}, "data.a[0].cidr: expected a string"),
        ({"data": {"a": [{"exists": "yes"}]}}, "data.a[0].exists: expected true or false"),
        ({"data": {"a": [{"wildcard": "a**b"}]}}, "consecutive '*'"),
        ({"data": {"a": [{"wildcard": "a\\nb"}]}}, "a backslash escapes only"),
        ({"data": {"a": [{"anything-but": {"contains": "x"}}]}}, "anything-but: expected a value"),
        ({"data": {"a": [{"anything-but": []}]}}, "anything-but: expected a non-empty list"),
        ({"data": {"a": [{"prefix": {"ignore-case": "x"}}]}}, "equals-ignore-case"),
        ({"$or": []}, "sub.filter.pattern.$or: expected a non-empty list of patterns"),
        ({"$or": [{"type": ["a"]}, "b"]}, "sub.filter.pattern.$or[1]: expected a pattern"),
        ({"data": {"x y": {"z": "1"}}}, "sub.filter.pattern.data['x y'].z: expected a list"),
    ],
)
def test_invalid_patterns_name_their_path(pattern: dict[str, Any], message: str) -> None:
    """An invalid pattern raises ConfigError naming the path inside it."""
    with pytest.raises(ConfigError) as caught:
        compile_pattern(pattern, where="sub.filter.pattern")
    assert message in str(caught.value)


# -- properties --------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=5)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(value=json_scalars | finite, allowed=st.lists(json_scalars, min_size=1, max_size=4))
def test_exact_matching_is_typed_equality(value: Any, allowed: list[Any]) -> None:
    """A value matches an exact list when an item is equal to it and of the same JSON type."""

    def kind(v: Any) -> str:
        return "number" if type(v) in (int, float) else type(v).__name__

    expected = any(kind(value) == kind(item) and value == item for item in allowed)
    assert _matches({"data": {"v": allowed}}, _event({"v": value})) is expected


@given(value=json_scalars | finite, low=st.integers(-50, 50), high=st.integers(-50, 50))
def test_numeric_range_is_a_typed_comparison(value: Any, low: int, high: int) -> None:
    """[">=", low, "<", high] holds only for JSON numbers in [low, high)."""
    is_number = type(value) in (int, float)
    expected = is_number and low <= value < high
    pattern = {"data": {"v": [{"numeric": [">=", low, "<", high]}]}}
    assert _matches(pattern, _event({"v": value})) is expected
