"""The terminal view of ``eventmesh subscribe``: a publisher's attributes are shown as
text, never read as rich markup."""

from __future__ import annotations

import io

import pytest

from eventmesh import Event
from eventmesh.cli import _LiveView

pytest.importorskip("rich")


def test_the_live_view_shows_markup_and_controls_in_attributes_as_text() -> None:
    """A type ``[/x]`` (which rich reads as a closing tag and raised MarkupError on, so
    the CLI died before the ack, at every restart), a source ``[bold]``, an emoji code
    and an ESC sequence in the id are printed as the characters they are."""
    from rich.console import Console

    view = _LiveView()
    out = io.StringIO()
    view.console = Console(file=out, width=400, color_system=None)
    event = Event(type="[/x]", source="[bold]/s", id=":smile: \x1b[2J", data={"n": "[/y]"})
    view.show(event, attempt=2)
    first, data = out.getvalue().splitlines()[:2]
    assert "[/x] [bold]/s id=:smile: \\x1b[2J (attempt 2)" in first
    assert "[/y]" in data


def test_the_dead_letter_views_show_markup_and_controls_as_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``eventmesh dlq list`` and ``show`` print a dead letter's id, type and reasons as
    the characters they are: an id ``[/bad]`` raised MarkupError in both views, and a
    type ``[red]spoof[/red]`` was styled (a second review, helper-54)."""
    from eventmesh._cli_dlq import _show, _table
    from eventmesh.connectors.base import StoredEvent

    event = Event(
        type="[red]spoof[/red]",
        source="/s",
        id="[/bad]",
        extensions={"deadlettererror": "boom \x1b[2J", "deadletterreason": "failed"},
    )
    stored = StoredEvent(event, 0, 7, 1_700_000_000.0)
    _table([stored], "orders.dlq")
    _show([stored])
    out = capsys.readouterr().out
    assert "[/bad]" in out
    assert "[red]spoof[/red]" in out
    assert "\x1b[2J" not in out
    assert "\\x1b[2J" in out
