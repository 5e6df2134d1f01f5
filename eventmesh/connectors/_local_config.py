"""The local connector's settings and how it stores an event: the row's bytes, and the
partition of a ``partitionkey``."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from eventmesh._duration import Duration
from eventmesh.connectors._sqlite import MAX_PARTITIONS
from eventmesh.errors import EventMeshError
from eventmesh.event import (
    Event,
    JSONData,
    decode_json,
    encode_json,
    json_keeps,
    stored_data,
    struct_keeps,
)

__all__ = ["LocalConfig", "check_text", "decode", "encode", "partition_of"]


class LocalConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the local connector."""

    data_dir: str | None = None
    """The directory of the store (created if missing). None: the daemon's data directory
    (``--data-dir``, ``EVENTMESH_DATA_DIR``), else ``./eventmesh-data``."""
    fsync: Literal["always", "batch", "interval"] = "batch"
    """When a commit reaches the disk (see the module's docs for what each promises)."""
    fsync_interval: Duration = Duration(1.0)
    """With ``fsync: interval``: how often the log is fsynced."""
    partitions: int = 8
    """Partitions of a new topic (a topic keeps the count it was created with)."""
    max_bytes: int | None = 1 << 30
    """Bytes of encoded events a topic retains (split evenly over its partitions); the
    oldest go first. None: no size limit."""
    max_age: Duration | None = Duration(7 * 86400)
    """Delete events older than this, read or not. None: no age limit."""
    cache_events: int = 100_000
    """The most events per topic also held in memory (the newest, kept while some group
    has not been handed them; the memory connector's ``max_events``), so consumers less
    than this far behind never read the disk."""
    cache_bytes: int = 64 << 20
    """The most bytes (as stored) of those events per topic, split evenly over its
    partitions: past it the oldest are read back from disk when a consumer needs them.
    A topic no group with members reads holds none."""
    max_batch: int = 20_000
    """Most events committed in one transaction."""

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be from 1 to {MAX_PARTITIONS}")
        if not 0 < self.fsync_interval < math.inf:
            raise ValueError("fsync_interval must be a positive duration such as '1s'")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError("max_bytes must be at least 1 (or null)")
        if self.max_age is not None and not 0 < self.max_age < math.inf:
            raise ValueError("max_age must be a positive duration such as '168h' (or null)")
        if self.cache_events < 0 or self.max_batch < 1:
            raise ValueError("cache_events must be 0 or more and max_batch at least 1")
        if self.cache_bytes < 0:
            raise ValueError("cache_bytes must be 0 or more")


def check_text(what: str, text: str, error: type[EventMeshError]) -> None:
    """``error`` when ``text`` (a topic or group name, a state bucket or key) cannot be
    stored as SQLite text: a lone surrogate, which UTF-8 cannot encode, would fail the
    writer's whole batch, other callers' writes with it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(
            f"{what} {text!r} is not valid Unicode text (it holds a lone surrogate); "
            "use text that encodes as UTF-8"
        ) from None


def partition_of(key: Any, n: int) -> int:
    """A partitionkey's partition: the same in every process (``hash()`` is not)."""
    return zlib.crc32(str(key).encode()) % n


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Event | bytes | tuple[bytes, bytes]])


def encode(events: Sequence[Event]) -> bytes:
    """Consecutive events of one partition as stored, in one row: a MessagePack array of
    the Structs, encoded by msgspec in one call. An event that MessagePack would not keep
    whole (a time with another offset than UTC or with nanoseconds, data kept as the JSON
    it arrived as, a typed extension: see ``struct_keeps``) is an item of its own in the
    JSON event format, as bytes; one whose JSON data that format would not keep byte for
    byte (``json_keeps``) is a pair: the event without its data, and the data's bytes."""
    return _encoder.encode([_item(e) for e in events])


def _item(event: Event) -> Event | bytes | tuple[bytes, bytes]:
    if struct_keeps(event):
        return event
    if json_keeps(event):
        return encode_json(event)
    data: JSONData = stored_data(event)
    return encode_json(event.replace(data=None)), data.raw


def decode(body: bytes) -> list[Event]:
    """The events of a row, in offset order."""
    return [_event(item) for item in _decoder.decode(body)]


def _event(item: Event | bytes | tuple[bytes, bytes]) -> Event:
    if isinstance(item, Event):
        return item
    if isinstance(item, bytes):
        return decode_json(item)
    head, raw = item
    return decode_json(head).replace(data=JSONData(raw))
