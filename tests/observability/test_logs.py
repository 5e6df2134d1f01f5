"""Structured logs: a dead-letter record names the event and the subscription in its
JSON fields, and carries the event's data only when asked to."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import anyio
import msgspec
import pytest

from eventmesh import Event, Mesh
from eventmesh._logging import JsonFormatter, configure_logging, event_fields

pytestmark = pytest.mark.anyio

SECRET = {"card": "4111 1111 1111 1111"}


async def refuse(event: Event) -> None:
    raise RuntimeError("refused")


async def dead_letter_record(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    """Run an event into the dead-letter topic; return the warning logged for it."""
    caplog.set_level(logging.WARNING, logger="eventmesh.delivery.gate")
    async with Mesh() as mesh:
        sub = await mesh.subscribe(
            "orders",
            "billing",
            handler=refuse,
            delivery={"max_attempts": 1},
            name="billing",
        )
        event = Event(type="order.created", source="/t", id="e-7", data=SECRET)
        await mesh.publish("orders", event)
        with anyio.fail_after(5):
            while sub.stats.dead_lettered < 1:
                await anyio.sleep(0.01)
    [record] = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    return record


async def test_a_dead_letter_record_names_the_event_but_not_its_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The JSON line of a dead letter has event_id, event_type, subscription, reason and
    the dead-letter topic, and no trace of the event's data."""
    record = await dead_letter_record(caplog)
    line = JsonFormatter().format(record)
    fields = msgspec.json.decode(line)
    assert fields["level"] == "warning"
    assert fields["event_id"] == "e-7"
    assert fields["event_type"] == "order.created"
    assert fields["subscription"] == "billing"
    assert fields["reason"] == "failed"
    assert fields["dead_letter_topic"] == "orders.dlq"
    assert "event_data" not in fields
    assert "4111" not in line


async def test_the_data_is_logged_when_payload_is_asked_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With payload=True (logging.payload in the config) the JSON line holds the data."""
    record = await dead_letter_record(caplog)
    fields = msgspec.json.decode(JsonFormatter(payload=True).format(record))
    assert fields["event_data"] == SECRET


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back after a test that configures it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_the_daemon_writes_json_lines_and_nothing_when_disabled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """configure_logging with format json writes one JSON object per record to stderr,
    with the record's extra fields; with enabled false it writes nothing."""
    configure_logging("info", "json")
    event = Event(type="order.created", source="/t", id="e-9", data=SECRET)
    logging.getLogger("eventmesh.test").warning("hello", extra=event_fields(event, "billing"))
    [line] = capsys.readouterr().err.splitlines()
    fields = msgspec.json.decode(line)
    assert (fields["message"], fields["event_id"], fields["subscription"]) == (
        "hello",
        "e-9",
        "billing",
    )
    assert "event_data" not in fields
    configure_logging("info", "json", enabled=False)
    logging.getLogger("eventmesh.test").error("not written")
    assert capsys.readouterr().err == ""


FORGED = "e-1\n00:00:00 CRITICAL eventmesh.auth: principal 'admin' authenticated\r\x1b[2J\x85"


@pytest.mark.usefixtures("root_logging")
def test_the_console_format_writes_a_message_on_one_line_with_controls_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An event id with a newline, a carriage return, an ESC sequence and a C1 control
    cannot forge a console log line: the record is one line, each control written as
    its escape; a traceback's lines are indented, so none starts at the margin."""
    configure_logging("info", "console")
    log = logging.getLogger("eventmesh.test")
    log.warning("dropped event %s", FORGED)
    try:
        raise ValueError(FORGED)
    except ValueError:
        log.exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(
        "eventmesh.test: dropped event e-1\\n00:00:00 CRITICAL eventmesh.auth: principal "
        "'admin' authenticated\\r\\x1b[2J\\x85"
    )
    assert lines[1].endswith("eventmesh.test: failed")
    assert len(lines) > 3
    assert all(line.startswith("    ") for line in lines[2:])
    assert not any(char in line for line in lines for char in "\r\x1b\x85")
