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
