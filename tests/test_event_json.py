"""The JSON encoders' and decoders' fast paths agree with Event.to_dict and Event.from_dict."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from eventmesh import Event, EventValidationError
from eventmesh.event import decode_json, decode_json_batch, encode_json, encode_json_batch
from eventmesh.testing.strategies import OFFSETS, content_and_data, events, json_values, times

# Any instant Python can hold, in zones RFC 3339 cannot write too (seconds in the offset).
_times = times(
    max_value=datetime.max, offsets=(*OFFSETS, timedelta(hours=5, minutes=30, seconds=15))
)
_json = json_values()


def _to_dict(event: Event) -> dict[str, Any]:
    """The JSON format by its definition: the attributes, time in RFC 3339, then data."""
    obj = event.attributes()
    if event.time is not None:
        text = event.time.isoformat()
        obj["time"] = text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(event.data, bytes):
        obj["data_base64"] = base64.b64encode(event.data).decode()
    elif event.data is not None:
        obj["data"] = event.data
    return obj


@given(events(data=content_and_data("format"), time=st.none() | _times))
@settings(max_examples=400, deadline=None)
def test_encode_json_writes_exactly_what_to_dict_says(event: Event) -> None:
    """Byte for byte, whatever the time zone (UTC times are written by msgspec), and
    to_dict keeps its keys in the format's order."""
    expected = _to_dict(event)
    assert list(event.to_dict().items()) == list(expected.items())
    assert encode_json(event) == msgspec.json.encode(expected)
    assert encode_json_batch([event, event]) == msgspec.json.encode([event.to_dict()] * 2)


# JSON objects near and far from events: valid ones with optional attributes, and ones
# with keys missing, null or mistyped.
_valid = st.fixed_dictionaries(
    {
        "specversion": st.just("1.0"),
        "id": st.just("1"),
        "source": st.just("/s"),
        "type": st.just("t"),
    },
    optional={
        "time": st.sampled_from(["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.123456789+02:00"]),
        "subject": st.just("sub"),
        "datacontenttype": st.just("application/json"),
        "dataschema": st.just("https://example.com/s"),
        "data": _json,
        "partitionkey": st.sampled_from(["k", 7, True, None]),
        "n1": st.integers(-3, 3),
    },
)
_broken = st.fixed_dictionaries(
    {},
    optional={
        "specversion": st.sampled_from(["0.3", None, 1]),
        "id": st.sampled_from(["", None, 7]),
        "source": st.sampled_from([None, ["x"]]),
        "type": st.sampled_from(["", None]),
        "time": st.sampled_from(["yesterday", None, 5]),
        "subject": st.sampled_from(["", None, 3]),
        "dataschema": st.just(""),
        "data_base64": st.sampled_from(["aGk=", "not base64!", None]),
        "partitionkey": st.sampled_from([2**40, 1.5]),
        "Bad-Name": st.just("x"),
        "data": st.just("both"),
        "extensions": st.just({}),
    },
)
_objects = st.one_of(
    _valid,
    st.builds(lambda valid, broken: {**valid, **broken}, _valid, _broken),
    st.sampled_from([[], "text", 3, None]),
)


def _outcome(read: Any, payload: Any) -> tuple[str, Any]:
    try:
        return ("event", read(payload))
    except EventValidationError as exc:
        return ("error", (str(exc), exc.attribute, exc.index))


@given(_objects)
@settings(max_examples=1500, deadline=None)
def test_decode_json_reads_every_object_as_from_dict_does(obj: Any) -> None:
    """The same event, or the same error, as Event.from_dict of the decoded object."""
    payload = json.dumps(obj).encode()
    expected = _outcome(Event.from_dict, json.loads(payload))
    assert _outcome(decode_json, payload) == expected
    batch = _outcome(decode_json_batch, b"[" + payload + b"]")
    if expected[0] == "event":
        assert batch == ("event", [expected[1]])
    else:
        assert batch[0] == "error"
        assert batch[1] == (f"event 0 of the batch: {expected[1][0]}", expected[1][1], 0)
