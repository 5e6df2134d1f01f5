"""The internal event: a CloudEvents 1.0 event as a frozen msgspec Struct.

An event is decoded once at the edge into an :class:`Event` and encoded once on the
way out. Everything inside the mesh (connectors, filters, the dispatcher) passes the
same object around, which is why it is frozen: use :meth:`Event.replace` to derive a
changed copy.

The JSON event format (``application/cloudevents+json``) is implemented here with
msgspec; the cloudevents SDK is only used by :meth:`Event.from_cloudevent` and
:meth:`Event.to_cloudevent`, for code that already holds SDK events.
"""

from __future__ import annotations

import base64
import binascii
import os
import random
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import msgspec

from eventmesh._imports import needs_extra
from eventmesh.errors import EventValidationError

if TYPE_CHECKING:
    from cloudevents.core.base import BaseCloudEvent

# Plain sorted, as tests/test_public_api.py checks; isort's order puts URI first.
__all__ = [  # noqa: RUF022
    "Binary",
    "CONTEXT_ATTRIBUTES",
    "Event",
    "ExtensionValue",
    "JSONData",
    "NanoTime",
    "Timestamp",
    "URI",
    "URIRef",
    "check_data_depth",
    "data_text",
    "data_texts",
    "decode_json",
    "decode_json_batch",
    "encode_json",
    "encode_json_batch",
    "format_time",
    "is_json_media_type",
    "json_keeps",
    "keep_data_text",
    "parse_time",
    "stored_data",
    "struct_keeps",
]

SPECVERSION: Final = "1.0"
_CHECKED: Final = "".join(("1", ".0"))
"""``specversion`` as a decoder that has already checked every field passes it: ``"1.0"``,
but not the same object, so :meth:`Event.__post_init__` knows it may skip the checks. It
puts the plain ``"1.0"`` in its place, so no event (and no ``replace`` of one) keeps it.
Only for decoders whose types enforce what ``__post_init__`` checks (``eventmesh._wire``)."""
_force_setattr: Final = msgspec.structs.force_setattr

ExtensionValue: TypeAlias = str | int | bool
"""The value types an extension attribute may hold: the spec's String, Integer, Boolean,
and its URI, URI-reference, Timestamp and Binary as the typed strings :class:`URI`,
:class:`URIRef`, :class:`Timestamp` and :class:`Binary` (each its canonical string)."""


class URI(str):
    """An extension value of the CloudEvents type URI: its text, typed so that the
    protobuf format sends it as ``ce_uri``. Everywhere else it is the string it holds."""

    __slots__ = ()


class URIRef(str):
    """An extension value of the CloudEvents type URI-reference (``ce_uri_ref``)."""

    __slots__ = ()


class Timestamp(str):
    """An extension value of the CloudEvents type Timestamp, as its RFC 3339 text
    (``ce_timestamp`` in the protobuf format); :meth:`to_datetime` parses it."""

    __slots__ = ()

    def to_datetime(self) -> datetime:
        """The timestamp as an aware datetime (a :class:`NanoTime` when it has
        nanoseconds)."""
        return parse_time(str(self))


class Binary(str):
    """An extension value of the CloudEvents type Binary, as its canonical base64 text
    (``ce_bytes`` in the protobuf format); :meth:`to_bytes` decodes it."""

    __slots__ = ()

    @classmethod
    def of(cls, value: bytes) -> Binary:
        """The Binary value holding ``value``."""
        return cls(base64.b64encode(value).decode("ascii"))

    def to_bytes(self) -> bytes:
        """The bytes this value holds."""
        return base64.b64decode(self)


_TYPED_STRINGS: Final = frozenset({URI, URIRef, Timestamp, Binary})


class NanoTime(datetime):
    """A ``datetime`` that also keeps the nanoseconds below its microsecond, so a
    ``time`` sent as ``...12.123456789Z`` is written back with all nine digits.

    It compares, hashes and computes as the datetime it is (to the microsecond).
    ``parse_time`` and the protobuf format make one only when there are such digits.
    """

    extra_nanos: int = 0
    """Nanoseconds below :attr:`microsecond` (0-999)."""

    @classmethod
    def of(cls, value: datetime, extra_nanos: int) -> NanoTime:
        """``value`` with ``extra_nanos`` (0-999) nanoseconds below its microsecond."""
        made = cls(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            value.tzinfo,
            fold=value.fold,
        )
        made.extra_nanos = extra_nanos
        return made

    @property
    def nanosecond(self) -> int:
        """The fraction of the second in nanoseconds (0-999 999 999)."""
        return self.microsecond * 1000 + self.extra_nanos


CONTEXT_ATTRIBUTES: Final = frozenset(
    {"id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time"}
)
"""The attribute names CloudEvents 1.0 defines; an extension may not reuse them."""

# Names that may not be extensions: the context attributes, the data members of the
# JSON format, and our own struct field.
_RESERVED: Final = CONTEXT_ATTRIBUTES | {"data", "data_base64", "extensions"}
_NAME = re.compile(r"[a-z0-9]+\Z")
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1


# Event ids are random version-4 UUIDs from a private generator: seeded from the OS,
# reseeded in a forked child (so parent and child never share a sequence), and apart
# from the `random` module a user may seed. They identify events; they are not secrets.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


class _WriteWithEncodeJson:
    """What stands in a :class:`JSONData`'s own fields for what is not there (the value
    not parsed yet; the guard): msgspec cannot encode it, so encoding an event that holds
    kept JSON with msgspec itself fails, naming this class, rather than writing the
    Struct's fields in place of the data. Write events with :func:`encode_json` or a
    binding, which write the kept bytes."""

    __slots__ = ()


_UNPARSED: Final[Any] = _WriteWithEncodeJson()
_GUARD: Final[Any] = _WriteWithEncodeJson()


class JSONData(msgspec.Struct, gc=False):
    """Event data that is a JSON document, kept as the bytes it arrived as.

    The bindings make one for a body under a JSON content type, after checking that it
    is JSON, and write ``raw`` back unchanged (binary mode, and verbatim inside the JSON
    event format), so spacing, key order, duplicate keys and number spellings survive.
    ``value`` is the parsed document, parsed on first read (``event.data`` reads it).
    It equals, and its ``repr`` reads as, the parsed value.

    Like :class:`Event`, it is not tracked by Python's cyclic garbage collector (it
    holds bytes and parsed JSON, which cannot refer back to it), so the events a process
    keeps (a memory topic's retention, a consumer's backlog) cost its collections
    nothing. It is a msgspec Struct for that, but not one to encode: msgspec's own
    encoders refuse it (``TypeError`` naming ``_WriteWithEncodeJson``); the bindings and
    :func:`encode_json` write its bytes.
    """

    raw: bytes
    _value: Any = _UNPARSED  # the parsed value once read: see ``value``
    _guard: Any = _GUARD  # makes msgspec's own encoders refuse it: see _WriteWithEncodeJson

    @property
    def value(self) -> Any:
        """The parsed JSON value, parsed once, on first read; do not change it."""
        value = self._value
        if value is _UNPARSED:
            value = self._value = _decoder.decode(self.raw)
        return value

    @property
    def parsed(self) -> bool:
        """Whether :attr:`value` has been read (the body parsed) yet."""
        return self._value is not _UNPARSED

    def __eq__(self, other: object) -> bool:
        if type(other) is JSONData:
            return self.raw == other.raw or bool(self.value == other.value)
        return bool(self.value == other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # as unhashable as the value it holds

    def __repr__(self) -> str:
        # The value's repr, so an event reads (and compares by repr) as its data.
        return repr(self.value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (JSONData, (self.raw,))


def _new_id() -> str:
    h = "%032x" % (_rng.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A CloudEvents 1.0 event.

    ``type`` and ``source`` are required; ``id`` defaults to a new UUID, ``time`` to
    now in UTC and ``specversion`` to ``"1.0"``. ``data`` is a JSON value, ``str``
    or ``bytes``, or a :class:`JSONData` (JSON kept as the bytes it arrived as: reading
    ``event.data`` then gives the parsed value, parsed on first read, and the bindings
    send the bytes unchanged). ``extensions`` maps extension names (lower-case letters
    and digits) to ``str``, ``int`` or ``bool`` (or a typed string, see
    :data:`ExtensionValue`).

    Raises :class:`~eventmesh.errors.EventValidationError`, naming the attribute,
    when an attribute is missing, empty or of the wrong type.

    Events are not tracked by Python's cyclic garbage collector (msgspec's ``gc=False``):
    a process that keeps many of them (a memory topic's retention, a backlog) would
    otherwise have each collection walk every one: with Python's default collector and
    100,000 events kept, about half the time of decoding and publishing each. Data is
    JSON values, text or bytes, which
    cannot refer back to the event; data that does (a dict holding its own event) is
    never freed.
    """

    type: str
    source: str
    id: str = msgspec.field(default_factory=_new_id)
    specversion: str = SPECVERSION
    time: datetime | None = msgspec.field(default_factory=_now)
    datacontenttype: str | None = None
    dataschema: str | None = None
    subject: str | None = None
    data: Any = None
    extensions: dict[str, ExtensionValue] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.specversion is _CHECKED:  # built by a decoder that checked every field
            _force_setattr(self, "specversion", SPECVERSION)  # the mark goes at once
            return
        # Unrolled: this runs for every event decoded or built, so no getattr loops.
        if type(self.id) is not str or not self.id:
            _bad_required("id", self.id)
        if type(self.source) is not str or not self.source:
            _bad_required("source", self.source)
        if type(self.type) is not str or not self.type:
            _bad_required("type", self.type)
        if self.specversion != SPECVERSION:
            raise EventValidationError(
                f"attribute 'specversion' must be {SPECVERSION!r}, got {self.specversion!r}; "
                "eventmesh speaks CloudEvents 1.0",
                attribute="specversion",
            )
        if (
            self.datacontenttype is not None
            or self.dataschema is not None
            or (self.subject is not None)
        ):
            for name in ("datacontenttype", "dataschema", "subject"):
                value = getattr(self, name)
                if value is not None and (type(value) is not str or not value):
                    raise EventValidationError(
                        f"attribute {name!r} must be a non-empty string when set, got {value!r}",
                        attribute=name,
                    )
        time = self.time
        if time is not None and (not isinstance(time, datetime) or time.tzinfo is None):
            raise EventValidationError(
                f"attribute 'time' must be a timezone-aware datetime, got {time!r}",
                attribute="time",
            )
        if self.extensions:
            _check_extensions(self.extensions)

    # -- reading --------------------------------------------------------------------------

    @property
    def partitionkey(self) -> str | None:
        """The ``partitionkey`` extension as a string, used for ordering and partitioning."""
        key = self.extensions.get("partitionkey")
        return None if key is None else str(key)

    def get(self, name: str) -> Any:
        """The value of a context attribute or extension, or ``None`` when absent."""
        if name in CONTEXT_ATTRIBUTES:
            return getattr(self, name)
        return self.extensions.get(name)

    def attributes(self) -> dict[str, Any]:
        """Every attribute that is set (context attributes and extensions), by name."""
        attrs: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
        }
        for name in ("datacontenttype", "dataschema", "subject", "time"):
            value = getattr(self, name)
            if value is not None:
                attrs[name] = value
        attrs.update(self.extensions)
        return attrs

    def replace(self, **changes: Any) -> Event:
        """A copy of this event with the given fields changed (and validated)."""
        return msgspec.structs.replace(self, **changes)

    # -- the JSON event format ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-format object: attributes at the top, ``data`` or ``data_base64``."""
        obj = _json_object(self)
        time = obj.get("time")
        if time is not None and type(time) is not str:
            obj["time"] = _format_time(time)
        if type(obj.get("data")) is msgspec.Raw:
            obj["data"] = self.data
        for name, value in self.extensions.items():
            if type(value) in _TYPED_STRINGS:
                obj[name] = str(value)
        return obj

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Event:
        """Build an event from a JSON-format object (as :meth:`to_dict` makes).

        Attributes missing from ``obj`` stay absent: no id or time is invented here.
        """
        if not isinstance(obj, Mapping):
            raise EventValidationError(
                f"a CloudEvent in JSON format must be an object, got {type(obj).__name__}"
            )
        attrs = dict(obj)
        for required in ("specversion", "id", "source", "type"):
            if required not in attrs or attrs[required] is None:
                raise EventValidationError(
                    f"required attribute {required!r} is missing", attribute=required
                )
        specversion = attrs.pop("specversion")
        if specversion != SPECVERSION:
            raise EventValidationError(
                f"attribute 'specversion' must be {SPECVERSION!r}, got {specversion!r}",
                attribute="specversion",
            )
        raw_time = attrs.pop("time", None)
        data: Any = None
        has_data = "data" in attrs
        if "data_base64" in attrs:
            if has_data:
                raise EventValidationError(
                    "an event may carry 'data' or 'data_base64', not both", attribute="data"
                )
            encoded = attrs.pop("data_base64")
            if encoded is not None:
                data = _b64decode(encoded)
        elif has_data:
            data = attrs.pop("data")
        extensions = {}
        for name in list(attrs):
            if name not in CONTEXT_ATTRIBUTES:
                value = attrs.pop(name)
                if value is not None:  # the JSON format treats null as absent
                    extensions[name] = value
        return cls(
            id=attrs.get("id"),  # type: ignore[arg-type]  # checked by __post_init__
            source=attrs.get("source"),  # type: ignore[arg-type]
            type=attrs.get("type"),  # type: ignore[arg-type]
            datacontenttype=attrs.get("datacontenttype"),
            dataschema=attrs.get("dataschema"),
            subject=attrs.get("subject"),
            time=None if raw_time is None else parse_time(raw_time),
            data=data,
            extensions=extensions,
        )

    # -- the cloudevents SDK, at the edges ------------------------------------------------

    @classmethod
    def from_cloudevent(cls, event: BaseCloudEvent) -> Event:
        """Convert an SDK event (``cloudevents.core``) into an :class:`Event`."""
        attrs = dict(event.get_attributes())
        extensions = {k: attrs.pop(k) for k in list(attrs) if k not in CONTEXT_ATTRIBUTES}
        time = attrs.get("time")
        if isinstance(time, str):
            time = parse_time(time)
        return cls(
            id=attrs["id"],
            source=attrs["source"],
            type=attrs["type"],
            specversion=attrs.get("specversion", SPECVERSION),
            datacontenttype=attrs.get("datacontenttype"),
            dataschema=attrs.get("dataschema"),
            subject=attrs.get("subject"),
            time=time,
            data=event.get_data(),
            extensions=extensions,
        )

    def to_cloudevent(self) -> BaseCloudEvent:
        """Convert to the SDK's ``cloudevents.core.v1.event.CloudEvent``.

        The SDK gives every event a ``time``: an event without one gets the current time.
        Needs the ``cloudevents`` extra (a MissingExtraError without it).
        """
        with needs_extra("Event.to_cloudevent"):
            from cloudevents.core.v1.event import CloudEvent

        data = self.data
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        return CloudEvent(attributes=self.attributes(), data=data)


# ``data`` is a slot of the Struct; msgspec reads and writes it by offset (encode,
# replace, ==), Python code through this descriptor, which shows a JSONData's parsed value.
_data_slot: Final[Any] = Event.__dict__["data"]
stored_data: Final[Any] = _data_slot.__get__
"""``stored_data(event)``: the data as stored, a :class:`JSONData` left as it is (what
the bindings write); ``event.data`` is the same with a JSONData's parsed value."""


def _data(event: Event, _get: Any = stored_data, _kept: Any = JSONData) -> Any:
    """The ``data`` attribute of an :class:`Event` (see ``_data_slot``); a plain property
    with its names bound as defaults, the cheapest way Python code can reach the slot."""
    value = _get(event)
    if type(value) is _kept:
        return value.value
    return value


type.__setattr__(Event, "data", property(_data, doc="The event's data (see Event)."))


def json_keeps(event: Event) -> bool:
    """True unless ``event``'s data is JSON with whitespace around its value (a body
    ending in a newline, say): the JSON event format writes JSON data as a ``data``
    member, and every reader, ours included, drops the whitespace around a member's
    value. A store that must give back the bytes it took writes such an event another
    way (binary mode, or the data apart)."""
    data = _data_slot.__get__(event)
    if type(data) is not JSONData:
        return True
    raw = data.raw
    return not (raw[:1].isspace() or raw[-1:].isspace()) or not is_json_media_type(
        event.datacontenttype
    )


def struct_keeps(event: Event) -> bool:
    """True when msgspec, encoding the :class:`Event` Struct itself (MessagePack, say),
    keeps all of ``event``: no time or a UTC time to the microsecond, no
    :class:`JSONData`, no typed extension string. Otherwise store :func:`encode_json`,
    which keeps all of it."""
    time = event.time
    if time is not None and (time.tzinfo is not UTC or type(time) is not datetime):
        return False
    if type(_data_slot.__get__(event)) is JSONData:
        return False
    for value in event.extensions.values():
        kind = type(value)
        if kind is not str and kind is not int and kind is not bool:
            return False
    return True


def _bad_required(name: str, value: Any) -> None:
    raise EventValidationError(
        f"attribute {name!r} must be a non-empty string, got {value!r}", attribute=name
    )


# Extension names that passed the check in _check_extensions, which then skips it for
# them: events carry the same few names over and over. Bounded, so made-up names cannot
# grow it without limit.
_CHECKED_NAMES: Final[set[str]] = {"partitionkey"}
_CHECKED_NAMES_MAX: Final = 1024


def _check_extensions(extensions: Mapping[str, Any]) -> None:
    if not isinstance(extensions, dict):
        raise EventValidationError(
            f"'extensions' must be a dict, got {type(extensions).__name__}",
            attribute="extensions",
        )
    checked = _CHECKED_NAMES
    for name, value in extensions.items():
        if type(name) is not str or name not in checked:
            if type(name) is not str or not _NAME.match(name):
                raise EventValidationError(
                    f"extension name {name!r} is invalid: CloudEvents attribute names use "
                    "only lower-case ASCII letters and digits",
                    attribute=str(name),
                )
            if name in _RESERVED:
                raise EventValidationError(
                    f"extension name {name!r} is reserved by the CloudEvents spec; "
                    f"set it as a field of the event instead",
                    attribute=name,
                )
            if len(checked) < _CHECKED_NAMES_MAX:
                checked.add(name)
        kind = type(value)
        if kind is int:
            if not _INT32_MIN <= value <= _INT32_MAX:
                raise EventValidationError(
                    f"extension {name!r} is {value}, outside the 32-bit range CloudEvents "
                    "integers allow; send it as a string",
                    attribute=name,
                )
        elif kind is not str and kind is not bool and kind not in _TYPED_STRINGS:
            raise EventValidationError(
                f"extension {name!r} must be a string, integer or boolean, got {kind.__name__}",
                attribute=name,
            )


def _b64decode(encoded: Any) -> bytes:
    if not isinstance(encoded, str):
        raise EventValidationError("'data_base64' must be a string", attribute="data_base64")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EventValidationError(
            f"'data_base64' is not valid base64: {exc}", attribute="data_base64"
        ) from exc


def parse_time(value: Any) -> datetime:
    """Parse an RFC 3339 timestamp. Digits finer than microseconds are kept, to the
    nanosecond, in a :class:`NanoTime`; finer still are dropped."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise EventValidationError("attribute 'time' must carry a time zone", attribute="time")
        return value
    if not isinstance(value, str):
        raise EventValidationError(
            f"attribute 'time' must be an RFC 3339 string, got {type(value).__name__}",
            attribute="time",
        )
    if ("T" in value or "t" in value) and len(value) <= 32:
        try:  # the common case, parsed in C: up to microseconds, with a zone
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            # "2024-05-01T12:00:00.123456Z" is 27 long: only a longer one can hold more
            # digits (fromisoformat drops them).
            if len(value) > 27:
                extra = _extra_nanos(value)
                if extra:
                    return NanoTime.of(parsed, extra)
            return parsed
    text = value
    extra = 0
    dot = text.find(".")
    if dot != -1:  # Python keeps microseconds; CloudEvents producers may send nanoseconds
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        if end - dot > 7:
            extra = int(text[dot + 7 : min(end, dot + 10)].ljust(3, "0"))
            text = text[: dot + 7] + text[end:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in text.upper():
        raise EventValidationError(
            f"attribute 'time' is {value!r}, not an RFC 3339 timestamp "
            "(for example 2024-05-01T12:00:00Z)",
            attribute="time",
        )
    return NanoTime.of(parsed, extra) if extra else parsed


def _extra_nanos(text: str) -> int:
    """The 7th to 9th fraction digits of RFC 3339 ``text`` as nanoseconds (0 if none)."""
    dot = text.find(".")
    if dot == -1:
        return 0
    digits = text[dot + 7 : dot + 10]
    end = 0
    while end < len(digits) and digits[end].isdigit():
        end += 1
    return int(digits[:end].ljust(3, "0")) if end else 0


def format_time(value: datetime) -> str:
    """``value`` in RFC 3339 as the bindings write it: ``Z`` for UTC, nine fraction
    digits for a :class:`NanoTime` with nanoseconds, else as ``isoformat`` gives."""
    if type(value) is datetime and value.tzinfo is UTC:
        # The usual case, once per event on every binary-mode write: msgspec writes the
        # very same text in C, at a fifth of isoformat's cost and the slicing after it.
        return _time_text(value)[1:-1].decode("ascii")
    extra = value.extra_nanos if type(value) is NanoTime else 0
    if extra:
        text = value.isoformat(timespec="microseconds")
        text = f"{text[:26]}{extra:03d}{text[26:]}"  # after YYYY-MM-DDTHH:MM:SS.ffffff
    else:
        text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


_format_time = format_time
_time_text: Final = msgspec.json.Encoder().encode


# -- whole-message helpers (structured mode) --------------------------------------------


def _json_object(event: Event) -> dict[str, Any]:
    """The event as a JSON-format object, keys in the format's order. A UTC ``time``
    stays a datetime, which msgspec writes as the very text ``_format_time`` makes (and
    :meth:`Event.to_dict` formats itself)."""
    obj: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
    }
    value = event.datacontenttype
    if value is not None:
        obj["datacontenttype"] = value
    value = event.dataschema
    if value is not None:
        obj["dataschema"] = value
    value = event.subject
    if value is not None:
        obj["subject"] = value
    time = event.time
    if time is not None:
        # msgspec writes other offsets to the minute only; Python keeps their seconds.
        obj["time"] = time if time.tzinfo is UTC and type(time) is datetime else _format_time(time)
    if event.extensions:
        obj.update(event.extensions)  # a typed string goes through _enc_hook
    data = _data_slot.__get__(event)
    if data is not None:
        if type(data) is JSONData:
            obj["data"] = (
                msgspec.Raw(data.raw)  # written verbatim
                if is_json_media_type(event.datacontenttype)
                else data.value
            )
        elif isinstance(data, bytes | bytearray | memoryview):
            obj["data_base64"] = base64.b64encode(data).decode("ascii")
        else:
            obj["data"] = data
    return obj


# Keys of a JSON-format object that are not extensions (data_base64 takes the general path).
_NOT_EXTENSIONS: Final = CONTEXT_ATTRIBUTES | {"data"}


def _from_json_object(obj: Any) -> Event:
    """:meth:`Event.from_dict` for an object the JSON decoder returned, the common case
    without copying it; anything else (and every error) goes to ``from_dict`` itself."""
    if type(obj) is not dict or "data_base64" in obj:
        return Event.from_dict(obj)
    get = obj.get
    id_ = get("id")
    source = get("source")
    type_ = get("type")
    if get("specversion") != SPECVERSION or id_ is None or source is None or type_ is None:
        return Event.from_dict(obj)
    raw_time = get("time")
    not_extensions = _NOT_EXTENSIONS
    return Event(
        id=id_,
        source=source,
        type=type_,
        datacontenttype=get("datacontenttype"),
        dataschema=get("dataschema"),
        subject=get("subject"),
        time=None if raw_time is None else parse_time(raw_time),
        data=get("data"),
        extensions={
            name: value
            for name, value in obj.items()
            if name not in not_extensions and value is not None  # null is absent
        },
    )


def is_json_media_type(content_type: str | None) -> bool:
    """True for no content type, ``application/json``, ``text/json`` and ``*+json``."""
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def _enc_hook(value: Any) -> Any:
    if isinstance(value, str):  # a typed extension value: its canonical string
        return str(value)
    raise TypeError(f"Encoding objects of type {type(value).__name__} is unsupported")


class _DataText(msgspec.Struct):
    """The ``data`` member of a JSON-format event as its JSON text, the rest skipped."""

    data: msgspec.Raw = msgspec.Raw()


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.json.Decoder()
_data_text = msgspec.json.Decoder(_DataText)
_data_texts = msgspec.json.Decoder(list[_DataText])


def keep_data_text(obj: dict[str, Any], text: msgspec.Raw) -> None:
    """Put ``text``, the JSON text of the data of ``obj`` (a decoded JSON-format event),
    in it as a :class:`JSONData` where the content type says JSON, so that the bindings
    write the data as it arrived."""
    if not text:
        return
    data = obj.get("data")  # None for "data": null, kept as the JSON null it is
    content_type = obj.get("datacontenttype")
    if content_type is None or (type(content_type) is str and is_json_media_type(content_type)):
        obj["data"] = JSONData(bytes(text), data)


MAX_DATA_DEPTH: Final = 64
"""The deepest nesting of arrays and objects an event's JSON data may have, as every
binding reads it (``[[1]]`` is 2 deep): deeper data is refused with
``EventValidationError`` on ``data``, the same on every connector (docs/sidecar.md)."""


def _may_nest(payload: bytes | str, limit: int) -> bool:
    """False when ``payload`` holds too few ``[`` and ``{`` to nest deeper than ``limit``:
    two scans at memchr speed, so a normal event never pays for :func:`check_data_depth`."""
    if isinstance(payload, str):
        return payload.count("[") + payload.count("{") > limit
    if not isinstance(payload, bytes | bytearray):
        payload = bytes(memoryview(payload))  # a msgspec.Raw, a memoryview
    return payload.count(b"[") + payload.count(b"{") > limit


def _too_deep(data: Any, limit: int) -> bool:
    """True when decoded JSON ``data`` nests lists and dicts more than ``limit`` deep.
    Level by level, each level's containers gathered by one comprehension: no recursion
    (the check cannot exhaust the stack), and two to five times as fast as a walk with a
    stack of its own on the data a hostile caller sends (hundreds of thousands of small
    arrays or objects in a megabyte)."""
    if type(data) is not dict and type(data) is not list:
        return False
    level = [data]
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is list or type(child) is dict
        ]
        if not level:
            return False
    return True


def check_data_depth(data: Any, payload: bytes | str | None = None) -> None:
    """``EventValidationError`` on ``data`` when decoded JSON ``data`` nests deeper than
    :data:`MAX_DATA_DEPTH`. Given the ``payload`` it was decoded from, a payload with too
    few brackets to be that deep skips the walk."""
    if payload is not None and not _may_nest(payload, MAX_DATA_DEPTH):
        return
    if _too_deep(data, MAX_DATA_DEPTH):
        raise _deep_error()


def _deep_error() -> EventValidationError:
    return EventValidationError(
        f"the data nests arrays and objects more than {MAX_DATA_DEPTH} deep, the most "
        "eventmesh reads; flatten it",
        attribute="data",
    )


def encode_json(event: Event) -> bytes:
    """Encode an event in the JSON event format (``application/cloudevents+json``);
    ``EventValidationError`` on ``data`` when it nests too deep to encode."""
    try:
        body = _encoder.encode(_json_object(event))
    except RecursionError as exc:
        raise _deep_error() from exc
    if _may_nest(body, MAX_DATA_DEPTH + 1):  # what no binding would read back is not sent
        check_data_depth(event.data)
    return body


def encode_json_batch(events: list[Event]) -> bytes:
    """Encode events in the JSON batch format (``application/cloudevents-batch+json``)."""
    try:
        body = _encoder.encode([_json_object(event) for event in events])
    except RecursionError as exc:
        raise _deep_error() from exc
    if _may_nest(body, MAX_DATA_DEPTH + 2):
        for event in events:
            check_data_depth(event.data)
    return body


def decode_json(payload: bytes | str) -> Event:
    """Decode one event in the JSON event format; raises EventValidationError (also for
    data nested deeper than :data:`MAX_DATA_DEPTH`)."""
    if type(payload) is bytes and (event := _wire.decode_one(payload)) is not None:
        return event
    try:
        obj = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise EventValidationError(f"the event is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise _deep_error() from exc
    if type(obj) is dict:
        if _may_nest(payload, MAX_DATA_DEPTH + 1):
            check_data_depth(obj.get("data"))
        if "data" in obj:
            keep_data_text(obj, data_text(payload))
    return _from_json_object(obj)


def data_text(payload: bytes | str) -> msgspec.Raw:
    """The JSON text of the ``data`` of the one JSON-format event in ``payload`` (empty
    when it has none); a second, cheap pass that builds nothing else."""
    return _data_text.decode(payload).data


def data_texts(objs: list[Any], payload: bytes | str) -> list[msgspec.Raw] | None:
    """The JSON text of each event's data in a batch ``payload`` already decoded as
    ``objs``, or None when no event has data (or the items are not all objects)."""
    if not any(type(obj) is dict and "data" in obj for obj in objs):
        return None
    try:
        return [item.data for item in _data_texts.decode(payload)]
    except msgspec.ValidationError:
        return None  # an item that is no object: the loop over objs says so


def decode_json_batch(payload: bytes | str) -> list[Event]:
    """Decode a JSON batch (an array of JSON-format events); raises EventValidationError."""
    if type(payload) is bytes and (events := _wire.decode_batch(payload)) is not None:
        return events
    try:
        objs = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise EventValidationError(f"the batch is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise _deep_error() from exc
    if not isinstance(objs, list):
        raise EventValidationError("a CloudEvents batch must be a JSON array of events")
    deep = _may_nest(payload, MAX_DATA_DEPTH + 2)
    texts = data_texts(objs, payload)
    events = []
    for index, obj in enumerate(objs):
        try:
            if type(obj) is dict:
                if deep:
                    check_data_depth(obj.get("data"))
                if texts:
                    keep_data_text(obj, texts[index])
            events.append(_from_json_object(obj))
        except EventValidationError as exc:
            raise exc.in_batch(index) from exc
    return events


# The typed fast path of decode_json and decode_json_batch: it builds on this module, so
# it is imported once everything above exists.
from eventmesh import _wire  # noqa: E402
