"""eventmesh.testing.strategies: each strategy keeps the promise its docstring makes, and
eventmesh.testing itself imports without hypothesis."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventmesh.bindings import decode_data, encode_data
from eventmesh.event import CONTEXT_ATTRIBUTES, Event, decode_json, encode_json
from eventmesh.testing.strategies import (
    OFFSETS,
    RESERVED_NAMES,
    content_and_data,
    events,
    extension_names,
    extension_values,
    json_values,
    text,
    times,
)


def test_eventmesh_testing_imports_without_hypothesis() -> None:
    """The conformance kit's package does not import the strategies, so it needs no
    hypothesis; the strategies module says it does."""
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import eventmesh.testing\n"
        "assert 'eventmesh.testing.strategies' not in sys.modules\n"
        "try:\n"
        "    import eventmesh.testing.strategies\n"
        "except ImportError:\n"
        "    print('needs hypothesis')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "needs hypothesis"


@given(extension_names())
def test_extension_names_are_valid_and_not_reserved(name: str) -> None:
    """Lower-case letters and digits, at most 20, never a context attribute or data member."""
    assert re.fullmatch(r"[a-z0-9]{1,20}", name)
    assert name not in RESERVED_NAMES
    assert name not in CONTEXT_ATTRIBUTES


@given(st.dictionaries(extension_names(), extension_values(), max_size=5))
def test_extension_values_make_valid_events(extensions: dict[str, Any]) -> None:
    """Any drawn extensions build an event without an error, and keep their types."""
    event = Event(type="t", source="/s", extensions=extensions)
    assert event.extensions == extensions


@given(times())
def test_times_are_aware_in_the_offsets_and_exist_in_utc(value: datetime) -> None:
    """Every time carries one of OFFSETS and converts to UTC without overflow."""
    offset = value.utcoffset()
    assert offset in OFFSETS
    assert value.astimezone(UTC) == value


@given(times(offsets=[timedelta(hours=1, seconds=5)], min_value=datetime(2020, 1, 1)))
def test_times_take_other_offsets_and_bounds(value: datetime) -> None:
    """The offsets and bounds asked for are the ones drawn."""
    assert value.utcoffset() == timedelta(hours=1, seconds=5)
    assert value.replace(tzinfo=None) >= datetime(2020, 1, 1)


@given(content_and_data("binary"))
@settings(max_examples=300)
def test_binary_pairs_survive_the_binary_mode_rules(pair: tuple[str | None, Any]) -> None:
    """encode_data then decode_data under the content type gives the data back."""
    content_type, data = pair
    event = Event(type="t", source="/s", datacontenttype=content_type, data=data)
    assert decode_data(encode_data(event), content_type) == data


@given(content_and_data("format"))
@settings(max_examples=300)
def test_format_pairs_survive_the_json_format(pair: tuple[str | None, Any]) -> None:
    """The JSON event format gives every pair back, bytes of any length included."""
    content_type, data = pair
    event = Event(type="t", source="/s", datacontenttype=content_type, data=data)
    assert decode_json(encode_json(event)).data == data


@given(content_and_data("sdk"))
def test_sdk_pairs_are_what_the_sdk_reads_back_as_we_do(pair: tuple[str | None, Any]) -> None:
    """JSON objects, text, bytes that are not UTF-8, or nothing."""
    content_type, data = pair
    if isinstance(data, bytes):
        assert content_type == "application/octet-stream"
        assert data.endswith(b"\xff")
    elif data is not None:
        assert isinstance(data, dict if content_type == "application/json" else str)


@given(json_values())
def test_json_values_survive_json(value: Any) -> None:
    """A JSON value is data the JSON format gives back equal."""
    assert decode_json(encode_json(Event(type="t", source="/s", data=value))).data == value


@given(events(sdk_comparable=True))
def test_sdk_comparable_events_have_a_time_and_string_extensions(event: Event) -> None:
    """The SDK-comparable events always carry a time and only string extensions."""
    assert event.time is not None
    assert all(isinstance(value, str) for value in event.extensions.values())


@given(events(alphabet=st.characters(codec="ascii", exclude_categories=("Cc",))))
def test_the_alphabet_bounds_every_text_attribute(event: Event) -> None:
    """Every text attribute and string extension uses only the alphabet asked for."""
    strings = [event.type, event.source, event.id, event.subject or "", event.dataschema or ""]
    strings += [value for value in event.extensions.values() if isinstance(value, str)]
    for value in strings:
        assert value.isascii()
        assert value.isprintable()


@given(events(data=st.just(("application/json", b"")), time=st.none()))
def test_events_take_the_data_and_time_asked_for(event: Event) -> None:
    """The data pairs and times passed replace the defaults."""
    assert (event.datacontenttype, event.data, event.time) == ("application/json", b"", None)


@given(text(min_size=0, max_size=3))
def test_text_is_utf8_encodable(value: str) -> None:
    """No lone surrogates: every drawn text encodes as UTF-8."""
    assert len(value) <= 3
    value.encode("utf-8")
