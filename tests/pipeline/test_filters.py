"""The Subscriptions API filter dialects: exact, prefix, suffix, all, any, not, sql, pattern."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventmesh.errors import ConfigError
from eventmesh.event import Event
from eventmesh.pipeline.filters import DIALECTS, compile_filter, match_all


def _event(**fields: Any) -> Event:
    fields.setdefault("type", "com.example.order.created")
    fields.setdefault("source", "/shop/eu")
    return Event(**fields)


ORDER = _event(
    subject="orders/42",
    time=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    extensions={"tenant": "acme", "priority": 5, "urgent": True},
    data={"amount": 150, "country": "NL"},
)


def _matches(spec: Any, event: Event = ORDER) -> bool:
    return compile_filter(spec)(event)


# -- exact, prefix, suffix ---------------------------------------------------------------


def test_none_matches_every_event() -> None:
    """No filter spec compiles to the filter that matches everything."""
    assert compile_filter(None) is match_all
    assert compile_filter(None)(ORDER)


def test_exact_matches_a_context_attribute() -> None:
    """exact compares a context attribute with the string, case-sensitively."""
    assert _matches({"exact": {"type": "com.example.order.created"}})
    assert not _matches({"exact": {"type": "com.example.order.Created"}})
    assert not _matches({"exact": {"type": "com.example.order"}})


def test_exact_on_several_attributes_ands_them() -> None:
    """Every attribute named in one exact filter must match."""
    assert _matches({"exact": {"type": "com.example.order.created", "source": "/shop/eu"}})
    assert not _matches({"exact": {"type": "com.example.order.created", "source": "/shop/us"}})
    assert _matches({"exact": {"source": "/shop/eu", "tenant": "acme"}})
    assert not _matches({"exact": {"source": "/shop/eu", "tenant": "other"}})


def test_exact_matches_an_extension() -> None:
    """exact reads extensions as well as context attributes."""
    assert _matches({"exact": {"tenant": "acme"}})
    assert not _matches({"exact": {"tenant": "ACME"}})


def test_exact_compares_canonical_strings_of_integer_and_boolean_extensions() -> None:
    """An integer extension 5 matches "5"; a boolean true matches "true", never "1"."""
    assert _matches({"exact": {"priority": "5"}})
    assert not _matches({"exact": {"priority": "05"}})
    assert _matches({"exact": {"urgent": "true"}})
    assert not _matches({"exact": {"urgent": "1"}})
    one = _event(extensions={"flag": True, "count": 1})
    assert not _matches({"exact": {"count": "true"}}, one)
    assert _matches({"exact": {"count": "1"}}, one)


def test_exact_compares_time_as_rfc3339_text() -> None:
    """time is compared in the JSON format's text form."""
    assert _matches({"exact": {"time": "2024-05-01T12:00:00Z"}})
    assert _matches({"prefix": {"time": "2024-05-01"}})


def test_a_missing_attribute_never_matches() -> None:
    """exact, prefix and suffix on an attribute the event lacks are false."""
    bare = _event()
    assert not _matches({"exact": {"subject": "orders/42"}}, bare)
    assert not _matches({"prefix": {"subject": "o"}}, bare)
    assert not _matches({"suffix": {"tenant": "e"}}, bare)


def test_prefix_and_suffix() -> None:
    """prefix and suffix test the start and end of the value, case-sensitively."""
    assert _matches({"prefix": {"subject": "orders/", "type": "com.example."}})
    assert not _matches({"prefix": {"subject": "Orders/"}})
    assert _matches({"suffix": {"type": ".created", "tenant": "me"}})
    assert not _matches({"suffix": {"type": ".deleted"}})
    assert _matches({"prefix": {"priority": "5"}})


# -- all, any, not, nesting --------------------------------------------------------------


def test_all_any_not() -> None:
    """all needs every nested filter, any one of them, not inverts its filter."""
    yes = {"exact": {"tenant": "acme"}}
    no = {"exact": {"tenant": "other"}}
    assert _matches({"all": [yes, yes]})
    assert not _matches({"all": [yes, no]})
    assert _matches({"any": [no, yes]})
    assert not _matches({"any": [no, no]})
    assert _matches({"not": no})
    assert not _matches({"not": yes})
    assert _matches({"all": [yes, yes, yes]})
    assert not _matches({"any": [no, no, no]})


def test_a_top_level_list_means_all() -> None:
    """A list of filters is the Subscriptions API's filters array: all must match."""
    assert _matches([{"prefix": {"type": "com."}}, {"exact": {"tenant": "acme"}}])
    assert not _matches([{"prefix": {"type": "com."}}, {"exact": {"tenant": "x"}}])
    assert _matches([])


def test_dialects_nest_freely() -> None:
    """Dialects combine at any depth."""
    spec = {
        "any": [
            {"all": [{"exact": {"tenant": "other"}}, {"prefix": {"subject": "orders/"}}]},
            {
                "all": [
                    {"not": {"suffix": {"type": ".deleted"}}},
                    {"any": [{"exact": {"priority": "1"}}, {"exact": {"priority": "5"}}]},
                    {"pattern": {"data": {"amount": [{"numeric": [">", 100]}]}}},
                ]
            },
        ]
    }
    assert _matches(spec)
    assert not _matches(spec, _event(extensions={"priority": 5}, data={"amount": 1}))


def test_patterns_combine_with_all_any_not() -> None:
    """Content patterns take part in AND, OR and NOT (Apache EventMesh issue #3263)."""
    nl = {"pattern": {"data": {"country": ["NL"]}}}
    big = {"pattern": {"data": {"amount": [{"numeric": [">=", 100]}]}}}
    small_be = _event(data={"amount": 5, "country": "BE"})
    assert _matches({"all": [nl, big]})
    assert not _matches({"all": [nl, big]}, small_be)
    assert _matches({"any": [nl, big]}, _event(data={"amount": 5, "country": "NL"}))
    assert not _matches({"any": [nl, big]}, small_be)
    assert _matches({"not": nl}, small_be)
    assert not _matches({"not": nl})


def test_sql_dialect() -> None:
    """sql compiles a CESQL expression; an evaluation error means no match."""
    assert _matches({"sql": "subject LIKE 'orders/%' AND priority > 3"})
    assert not _matches({"sql": "subject LIKE 'invoices/%'"})
    assert not _matches({"sql": "missingext = 'x'"})


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"all": [{"exact": {"type": "a"}}, {"exact": "com.example"}]},
            "subscriptions[0].filter.all[1].exact: expected a mapping of attribute to string",
        ),
        (
            {"exact": {"priority": 5}},
            "subscriptions[0].filter.exact.priority: expected a non-empty string, got int 5",
        ),
        (
            {"prefix": {"subject": ""}},
            "subscriptions[0].filter.prefix.subject: expected a non-empty",
        ),
        (
            {"exact": {"Type": "x"}},
            "subscriptions[0].filter.exact: 'Type' is not an attribute name",
        ),
        ({"exact": {"data": "x"}}, "'data' is not an attribute; to match on the data use"),
        ({"all": []}, "subscriptions[0].filter.all: expected a non-empty list of filters"),
        (
            {"any": {"exact": {"type": "a"}}},
            "subscriptions[0].filter.any: expected a non-empty list",
        ),
        ({"not": [{"exact": {"type": "a"}}]}, "subscriptions[0].filter.not: expected one filter"),
        (
            {"exact": {"type": "a"}, "prefix": {"type": "b"}},
            "a filter names exactly one dialect, got 2 (exact, prefix)",
        ),
        ("type = 'a'", "subscriptions[0].filter: a filter is a mapping naming one dialect"),
        ({"sql": 5}, "subscriptions[0].filter.sql: expected a CESQL expression"),
        ({"sql": "type = "}, "subscriptions[0].filter.sql: invalid CESQL expression at column 8"),
        (
            {"any": [{"not": {"pattern": {"data": {"n": [{"numeric": [">"]}]}}}}]},
            "subscriptions[0].filter.any[0].not.pattern.data.n[0].numeric: expected operator",
        ),
    ],
)
def test_malformed_specs_name_their_path(spec: Any, message: str) -> None:
    """A malformed spec raises ConfigError whose message starts at the offending key."""
    with pytest.raises(ConfigError) as caught:
        compile_filter(spec, where="subscriptions[0].filter")
    assert message in str(caught.value)


def test_an_unknown_dialect_lists_the_known_ones() -> None:
    """The error for an unknown dialect names every dialect there is."""
    with pytest.raises(ConfigError, match="unknown filter dialect 'exakt'") as caught:
        compile_filter({"all": [{"exakt": {"type": "a"}}]})
    assert caught.value.key == "filter.all[0]"
    for name in DIALECTS:
        assert name in str(caught.value)


# -- properties --------------------------------------------------------------------------

names = st.sampled_from(["type", "source", "subject", "tenant", "region"])
texts = st.text(alphabet="abc./-", min_size=1, max_size=6)


@st.composite
def events(draw: st.DrawFn) -> Event:
    """Events whose type, source, subject and two extensions come from a small alphabet."""
    extensions: dict[str, Any] = {
        name: draw(texts) for name in ("tenant", "region") if draw(st.booleans())
    }
    return Event(
        type=draw(texts),
        source=draw(texts),
        subject=draw(st.none() | texts),
        extensions=extensions,
    )


@given(event=events(), name=names, value=texts)
def test_not_inverts_any_exact_filter(event: Event, name: str, value: str) -> None:
    """{"not": f} is true exactly when f is false, for any exact filter and event."""
    spec = {"exact": {name: value}}
    assert compile_filter({"not": spec})(event) is (not compile_filter(spec)(event))


@given(event=events(), name=names, value=texts)
def test_prefix_and_suffix_are_startswith_and_endswith(event: Event, name: str, value: str) -> None:
    """prefix is str.startswith and suffix str.endswith on the attribute, false when absent."""
    found = event.get(name)
    assert compile_filter({"prefix": {name: value}})(event) is (
        found is not None and found.startswith(value)
    )
    assert compile_filter({"suffix": {name: value}})(event) is (
        found is not None and found.endswith(value)
    )


@given(event=events(), name=names, value=texts)
def test_exact_is_equality(event: Event, name: str, value: str) -> None:
    """exact is string equality on the attribute, false when absent."""
    assert compile_filter({"exact": {name: value}})(event) is (event.get(name) == value)
