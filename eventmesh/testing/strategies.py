"""Hypothesis strategies that generate valid CloudEvents, for property tests of bindings.

Needs hypothesis (the ``testing`` extra: ``pip install 'eventmesh[testing]'``); import this
module by name, ``eventmesh.testing`` does not import it. A binding's round trip is one
property test::

    from hypothesis import given
    from eventmesh.testing.strategies import events

    @given(events())
    def test_structured_mode_round_trips(event):
        assert from_my_message(*to_my_structured(event)) == event

Every strategy draws only valid values: an :class:`~eventmesh.event.Event` built from
them never raises. Where transports differ, the options say so:

- ``alphabet``: the characters attribute text is drawn from. The default is every code
  point UTF-8 can carry (controls, quotes, ``%``, emoji); narrow it where the transport
  cannot carry some, e.g. ``st.characters(codec="ascii")``.
- ``data``: the (``datacontenttype``, data) pairs, by the rules that give the data back
  unchanged: :func:`content_and_data` has the binary-mode rules (``"binary"``), the
  event formats' (``"format"``) and the cloudevents SDK's (``"sdk"``).
- ``sdk_comparable``: events the cloudevents SDK encodes exactly as eventmesh does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, Literal

from eventmesh._imports import needs_extra

with needs_extra("eventmesh.testing.strategies"):
    from hypothesis import strategies as st

from eventmesh.event import CONTEXT_ATTRIBUTES, Event, ExtensionValue

__all__ = [
    "JSON_CONTENT_TYPES",
    "OFFSETS",
    "RESERVED_NAMES",
    "WELL_KNOWN_EXTENSIONS",
    "content_and_data",
    "events",
    "extension_names",
    "extension_values",
    "json_scalars",
    "json_values",
    "text",
    "times",
]

RESERVED_NAMES: Final = CONTEXT_ATTRIBUTES | {"data", "data_base64", "extensions"}
"""Names an extension may not take: the context attributes and the JSON format's members."""

WELL_KNOWN_EXTENSIONS: Final = ("partitionkey", "traceparent", "tracestate", "sequence")
"""Extension names bindings and the mesh treat specially; drawn often, on purpose."""

JSON_CONTENT_TYPES: Final = (None, "application/json", "application/vnd.x+json")
"""Content types under which data is JSON (no content type means JSON in CloudEvents)."""

OFFSETS: Final = (
    timedelta(0),
    timedelta(hours=2),
    timedelta(hours=-7),
    timedelta(hours=5, minutes=30),
    timedelta(hours=-8),
    timedelta(hours=-7, minutes=-30),
)
"""The UTC offsets :func:`times` uses: whole minutes, as RFC 3339 can write them."""

_INT32: Final = (-(2**31), 2**31 - 1)
_NAME_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
# A plain URI, and one with a space for the bindings to percent-encode.
_SCHEMAS: Final = ("https://example.com/schema", "https://example.com/schema v2")


def text(
    alphabet: st.SearchStrategy[str] | None = None, *, min_size: int = 1, max_size: int = 30
) -> st.SearchStrategy[str]:
    """Text an attribute may hold: non-empty by default, from ``alphabet`` (every code
    point UTF-8 can carry when None: no lone surrogates)."""
    chars = st.characters(codec="utf-8") if alphabet is None else alphabet
    return st.text(chars, min_size=min_size, max_size=max_size)


def json_scalars() -> st.SearchStrategy[bool | int | float | str | None]:
    """JSON scalars: null, booleans, 63-bit integers, finite floats, short strings."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**62), 2**62),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )


def json_values() -> st.SearchStrategy[Any]:
    """JSON values: :func:`json_scalars` nested in lists and objects, a dozen at most."""
    return st.recursive(
        json_scalars(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    )


def extension_names(*, max_size: int = 20) -> st.SearchStrategy[str]:
    """Valid extension names: lower-case letters and digits, none of
    :data:`RESERVED_NAMES`; the :data:`WELL_KNOWN_EXTENSIONS` among them often."""
    return st.sampled_from(WELL_KNOWN_EXTENSIONS) | st.text(
        _NAME_ALPHABET, min_size=1, max_size=max_size
    ).filter(lambda name: name not in RESERVED_NAMES)


def extension_values(
    alphabet: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[ExtensionValue]:
    """Extension values: strings (the empty one too) from ``alphabet``, 32-bit
    integers, booleans."""
    return st.one_of(text(alphabet, min_size=0), st.integers(*_INT32), st.booleans())


def times(
    *,
    min_value: datetime = datetime(1, 1, 2),
    max_value: datetime = datetime(9999, 12, 30),
    offsets: Sequence[timedelta] = OFFSETS,
) -> st.SearchStrategy[datetime]:
    """Aware datetimes between the naive bounds, each in one of ``offsets``. The default
    bounds keep a day from the ends, so every instant also exists in UTC."""
    zones = [UTC if offset == timedelta(0) else timezone(offset) for offset in offsets]
    return st.datetimes(min_value=min_value, max_value=max_value, timezones=st.sampled_from(zones))


def content_and_data(
    rules: Literal["binary", "format", "sdk"] = "binary",
) -> st.SearchStrategy[tuple[str | None, Any]]:
    """(datacontenttype, data) pairs that come back unchanged under ``rules``:

    - ``"binary"``: the binary-mode rules of :mod:`eventmesh.bindings` (data alone in a
      body): JSON under a JSON content type, text under ``text/plain``, non-empty bytes
      under ``application/octet-stream``, or no data.
    - ``"format"``: an event format that marks bytes as bytes (the JSON format's
      ``data_base64``, protobuf's ``binary_data``): all of the above, and bytes of any
      length under a JSON content type too.
    - ``"sdk"``: what the cloudevents SDK reads back as eventmesh does: a JSON object,
      text, bytes that are not UTF-8 (the SDK reads a UTF-8 body as text), or no data.
    """
    if rules == "sdk":
        return st.one_of(
            st.tuples(
                st.just("application/json"),
                st.dictionaries(st.text(max_size=8), json_values()),
            ),
            st.tuples(st.just("text/plain"), st.text(min_size=1, max_size=40)),
            st.tuples(
                st.just("application/octet-stream"),
                st.binary(min_size=1, max_size=40).map(lambda b: b + b"\xff"),
            ),
            st.tuples(st.none(), st.none()),
        )
    pairs = st.one_of(
        st.tuples(st.sampled_from(JSON_CONTENT_TYPES), json_values()),
        st.tuples(
            st.sampled_from(["text/plain", "text/plain; charset=utf-8"]),
            st.text(min_size=1, max_size=50),
        ),
        st.tuples(st.just("application/octet-stream"), st.binary(min_size=1, max_size=50)),
    )
    if rules == "format":
        pairs |= st.tuples(st.sampled_from(JSON_CONTENT_TYPES), st.binary(max_size=50))
    return pairs


@st.composite
def _events(
    draw: st.DrawFn,
    alphabet: st.SearchStrategy[str] | None,
    data: st.SearchStrategy[tuple[str | None, Any]],
    time: st.SearchStrategy[datetime | None],
    sdk_comparable: bool,
) -> Event:
    attribute = text(alphabet)
    content_type, value = draw(data)
    values = text(alphabet, min_size=0) if sdk_comparable else extension_values(alphabet)
    return Event(
        type=draw(attribute),
        source=draw(attribute),
        id=draw(attribute),
        time=draw(time),
        subject=draw(st.none() | attribute),
        dataschema=draw(st.none() | st.sampled_from(_SCHEMAS) | attribute),
        datacontenttype=content_type,
        data=value,
        extensions=draw(st.dictionaries(extension_names(), values, max_size=5)),
    )


def events(
    *,
    alphabet: st.SearchStrategy[str] | None = None,
    data: st.SearchStrategy[tuple[str | None, Any]] | None = None,
    time: st.SearchStrategy[datetime | None] | None = None,
    sdk_comparable: bool = False,
) -> st.SearchStrategy[Event]:
    """Valid events, every optional attribute sometimes set.

    ``alphabet``: the characters of every text attribute and string extension (see
    :func:`text`). ``data``: (datacontenttype, data) pairs, :func:`content_and_data`
    by default (by its ``"sdk"`` rules when ``sdk_comparable``). ``time``: the ``time``
    attribute, absent or one of :func:`times` by default.

    ``sdk_comparable``: events the cloudevents SDK writes exactly as eventmesh does, to
    compare a binding with the SDK's: always a time (the SDK invents one otherwise),
    string extensions only (the SDK writes a boolean as ``True``, the spec as ``true``;
    an integer read back from its binary mode is a string).
    """
    if data is None:
        data = content_and_data("sdk" if sdk_comparable else "binary")
    if time is None:
        time = times() if sdk_comparable else st.none() | times()
    return _events(alphabet, data, time, sdk_comparable)
