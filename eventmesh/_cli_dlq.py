"""``eventmesh dlq``: look at a dead-letter topic on a running sidecar and replay it.

::

    eventmesh dlq list TOPIC [--since TIME] [--after CURSOR] [--limit N]
    eventmesh dlq show TOPIC ID
    eventmesh dlq replay TOPIC [--since TIME] [--until TIME] [--reason R]
                               [--subscription GROUP] [--limit N] [--dry-run]

They talk to the sidecar's HTTP API (``--url``, credentials as every other command)
through the SDK's ``client.dead_letters(topic)``. On a terminal they print tables;
piped, ``list`` and ``show`` write one JSON object per stored event (``partition``,
``offset``, ``timestamp``, ``event``) and ``replay`` its result as one JSON object.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from eventmesh._imports import needs_extra
from eventmesh.deadletters import MAX_PAGE, MAX_REPLAY, parse_time

if TYPE_CHECKING:
    from eventmesh._client import Client
    from eventmesh.connectors.base import StoredEvent
    from eventmesh.deadletters import ReplayResult

__all__ = ["add_parser", "run"]


def _time(flag: str) -> Callable[[str], datetime]:
    def parse(text: str) -> datetime:
        from eventmesh.errors import ConfigError

        try:
            return parse_time(text, key=flag)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag}: ")) from None

    return parse


def _count(high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from 1 to {high}, got {text!r}")
        return value

    return parse


def add_parser(
    commands: Any, url: str, add_credentials: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``dlq`` and its three commands to ``commands`` (the main parser's subparsers)."""
    dlq = commands.add_parser("dlq", help="browse a dead-letter topic and replay it")
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list the events a topic holds, oldest first")
    listing.add_argument("topic")
    listing.add_argument("--since", type=_time("--since"), help="stored at or after (RFC 3339)")
    listing.add_argument("--after", help="the cursor a previous page printed ('next')")
    listing.add_argument("--limit", type=_count(MAX_PAGE), default=100, help="at most (100)")
    show = actions.add_parser("show", help="show the events with this id")
    show.add_argument("topic")
    show.add_argument("id")
    replay = actions.add_parser("replay", help="republish dead letters to their topics, each once")
    replay.add_argument("topic")
    replay.add_argument("--since", type=_time("--since"), help="dead-lettered at or after")
    replay.add_argument("--until", type=_time("--until"), help="dead-lettered before")
    replay.add_argument("--reason", help="failed, expired, filter or transform")
    replay.add_argument("--subscription", help="the consumer group that gave them up")
    replay.add_argument(
        "--limit", type=_count(MAX_REPLAY), default=1000, help="replay at most (1000)"
    )
    replay.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    for command in (listing, show, replay):
        command.add_argument("--url", default=url, help=f"the sidecar (default {url})")
        add_credentials(command)


async def run(args: argparse.Namespace, client: Client) -> None:
    """Run ``eventmesh dlq ACTION`` with a connected ``client``."""
    dead = client.dead_letters(args.topic)
    tty = sys.stdout.isatty()
    if args.dlq_command == "list":
        page = await dead.list(since=args.since, after=args.after, limit=args.limit)
        if not tty:
            _lines(page.events)
            return
        _table(page.events, f"{len(page.events)} events on {args.topic}")
        if page.next is not None and len(page.events) == args.limit:
            print(f"more: eventmesh dlq list {args.topic} --after {page.next}")
    elif args.dlq_command == "show":
        found = await dead.show(args.id)
        if not tty:
            _lines(found)
            return
        _show(found)
    else:
        result = await dead.replay(
            since=args.since,
            until=args.until,
            reason=args.reason,
            subscription=args.subscription,
            limit=args.limit,
            dry_run=args.dry_run,
        )
        if not tty:
            sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
            sys.stdout.flush()
            return
        _summary(args.topic, result)


def _lines(events: list[StoredEvent]) -> None:
    from eventmesh.deadletters import stored_json

    for stored in events:
        sys.stdout.write(msgspec.json.encode(stored_json(stored)).decode() + "\n")
    sys.stdout.flush()


def _when(stored: StoredEvent) -> str:
    if stored.timestamp is None:
        return "-"
    return datetime.fromtimestamp(stored.timestamp).isoformat(sep=" ", timespec="seconds")


def _table(events: list[StoredEvent], title: str) -> None:
    with needs_extra("the terminal view"):
        from rich.console import Console
        from rich.table import Table

    table = Table(title=title)
    for name in ("stored", "at", "id", "type", "reason", "from", "group", "error"):
        table.add_column(name, overflow="fold")
    for stored in events:
        ext = stored.event.extensions
        table.add_row(
            _when(stored),
            f"{stored.partition}:{stored.offset}",
            _text(stored.event.id),
            _text(stored.event.type),
            *(
                _text(str(ext.get(name, "-")))
                for name in ("deadletterreason", "deadlettertopic", "deadlettergroup")
            ),
            _text(str(ext.get("deadlettererror", "-"))),
        )
    Console().print(table)


def _text(value: str) -> Any:
    """What a publisher wrote, shown as it is: a rich ``Text`` (no markup: an id of
    ``[/x]`` crashed the view, ``[red]`` restyled it), its control characters escaped."""
    from rich.text import Text

    from eventmesh._logging import escape_controls

    return Text(escape_controls(value))


def _show(found: list[StoredEvent]) -> None:
    with needs_extra("the terminal view"):
        from rich.console import Console
        from rich.pretty import Pretty

    console = Console()
    for stored in found:
        heading = _text(stored.event.id)
        heading.stylize("bold")
        heading.append(f" stored {_when(stored)} at {stored.partition}:{stored.offset}")
        console.print(heading)
        console.print(Pretty(stored.event.to_dict()))


def _summary(topic: str, result: ReplayResult) -> None:
    verb = "would replay" if result.dry_run else "replayed"
    print(
        f"{topic}: {result.selected} selected, {verb} {result.replayed}, skipped "
        f"{result.skipped} replayed before"
        + (f", {result.unroutable} without deadlettertopic" if result.unroutable else "")
    )
    for event_id in result.ids:
        print(f"  {event_id}")
    if result.more:
        print("more remain: run the same replay again")
