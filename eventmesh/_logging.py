"""How the daemon writes logs: readable on a terminal, JSON lines otherwise.

Only the CLI calls :func:`configure_logging`; library code just logs. Records about one
event (a retry, a dead letter) carry :func:`event_fields` as ``extra``: ``event_id``,
``event_type``, ``subscription`` and the data as ``event_data``, which the JSON lines
leave out unless ``logging.payload`` is true (data may hold personal information).

Messages quote what clients chose (event ids, topic names), so neither format lets them
forge a line: JSON escapes control characters, and the console format
(:class:`ConsoleFormatter`) writes each record's message on one line with its control
characters escaped (``\n``, ``\x1b``) and indents the lines of a traceback.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from eventmesh.event import Event

__all__ = [
    "ConsoleFormatter",
    "JsonFormatter",
    "configure_logging",
    "escape_controls",
    "event_fields",
]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_PAYLOAD = "event_data"
_encoder = msgspec.json.Encoder(enc_hook=repr)  # an extra that JSON cannot hold: its repr


_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROLS: Final = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}") for code in (*range(0x20), *range(0x7F, 0xA0))
} | {0x2028: "\\u2028", 0x2029: "\\u2029"}
"""C0 and C1 control characters, DEL, and the Unicode line and paragraph separators,
each to its escape."""
_KEEP_NEWLINES: Final = {code: out for code, out in _CONTROLS.items() if code != 0x0A}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as its escape (``\n``, ``\x1b``),
    so what it quotes cannot start a line, move the cursor or colour a terminal."""
    return text.translate(_CONTROLS)


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


class ConsoleFormatter(logging.Formatter):
    """The console format: ``time level logger: message``, one line per record whatever
    the message holds (its control characters escaped: :func:`escape_controls`). A
    traceback or stack follows on lines of its own, each indented, with the control
    characters other than newlines escaped: a line that starts at the margin is always
    a record's first."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        # Not record.exc_text: another handler's formatter may have cached it unescaped.
        if record.exc_info:
            text += "\n" + _indented(self.formatException(record.exc_info))
        elif record.exc_text:
            text += "\n" + _indented(record.exc_text)
        if record.stack_info:
            text += "\n" + _indented(self.formatStack(record.stack_info))
        return text


def _indented(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.translate(_KEEP_NEWLINES).split("\n"))


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
        handler.setFormatter(ConsoleFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
