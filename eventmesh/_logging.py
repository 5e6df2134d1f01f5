"""How the daemon writes logs: readable on a terminal, JSON lines otherwise.

Only the CLI calls :func:`configure_logging`; library code just logs. Records about one
event (a retry, a dead letter) carry :func:`event_fields` as ``extra``: ``event_id``,
``event_type``, ``subscription`` and the data as ``event_data``, which the JSON lines
leave out unless ``logging.payload`` is true (data may hold personal information).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from eventmesh.event import Event

__all__ = ["JsonFormatter", "configure_logging", "event_fields"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_PAYLOAD = "event_data"
_encoder = msgspec.json.Encoder(enc_hook=repr)  # an extra that JSON cannot hold: its repr


def event_fields(event: Event, subscription: str, **more: Any) -> dict[str, Any]:
    """The ``extra`` of a record about ``event`` in ``subscription``."""
    return {
        "event_id": event.id,
        "event_type": event.type,
        "subscription": subscription,
        _PAYLOAD: event.data,
        **more,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and any ``extra`` fields
    (an event's data only with ``payload=True``)."""

    def __init__(self, *, payload: bool = False) -> None:
        super().__init__()
        self.payload = payload

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and (key != _PAYLOAD or self.payload):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


def configure_logging(
    level: str = "info", fmt: str = "auto", *, enabled: bool = True, payload: bool = False
) -> None:
    """Send eventmesh's records to stderr at ``level`` in ``fmt`` (auto, json, console);
    with ``enabled`` false, nowhere. ``payload``: JSON lines include events' data."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    if not enabled:
        root.addHandler(logging.NullHandler())
        root.setLevel(logging.CRITICAL + 1)
        return
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    if use_json:
        handler.setFormatter(JsonFormatter(payload=payload))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root.addHandler(handler)
    root.setLevel(level.upper())
