"""The ``eventmesh`` command.

``run`` (the sidecar), ``publish``, ``subscribe``, ``functions``, ``dlq`` (in
:mod:`eventmesh._cli_dlq`), ``check-config`` and ``version``; a bare ``eventmesh``
lists them. Library code never reads the environment; this module does, for the
``EVENTMESH_*`` defaults of its flags and the ``EVENTMESH__...`` configuration
variables. See docs/sidecar.md, 'The command line', and docs/configuration.md,
'Where values come from: precedence' and 'Environment variables'.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import yaml

from eventmesh import _cli_dlq
from eventmesh._imports import needs_extra
from eventmesh._loop import backend_options
from eventmesh._version import __version__
from eventmesh.config import MeshConfig, load_config, with_data_dir
from eventmesh.errors import ConfigError, EventMeshError, UnauthenticatedError

if TYPE_CHECKING:
    from eventmesh._client import Client

__all__ = ["main"]

log = logging.getLogger("eventmesh")

DEFAULT_URL = "http://127.0.0.1:10105"
DEFAULT_ADMIN_URL = "http://127.0.0.1:10106"
DEFAULT_DATA_DIR = "eventmesh-data"


def _add_credentials(command: argparse.ArgumentParser) -> None:
    """--token, --ca-file, --cert-file and --key-file, with their environment defaults.
    The token's value is never shown (not even in --help)."""
    env = os.environ
    command.add_argument(
        "--token",
        default=env.get("EVENTMESH_TOKEN") or None,
        help="bearer token for the sidecar (default $EVENTMESH_TOKEN, which keeps it out "
        "of the process list)",
    )
    for flag, variable, what in (
        ("--ca-file", "EVENTMESH_CA_FILE", "CA that signed the sidecar's TLS certificate"),
        ("--cert-file", "EVENTMESH_CERT_FILE", "client certificate, for mTLS"),
        ("--key-file", "EVENTMESH_KEY_FILE", "key of the client certificate, for mTLS"),
    ):
        command.add_argument(
            flag, default=env.get(variable) or None, help=f"PEM file: the {what} (${variable})"
        )


class _CommandsHelp(argparse.HelpFormatter):
    """Help that lists each command on one line. argparse before 3.13 measures command
    names one indent short of where it prints them, so ``check-config`` wrapped."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            longest = max(map(len, action.choices), default=0)
            width = longest + self._current_indent + self._indent_increment
            self._action_max_length = max(self._action_max_length, width)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventmesh",
        description="A CloudEvents mesh for Python services.",
        formatter_class=_CommandsHelp,
    )
    parser.add_argument("--version", action="version", version=f"eventmesh {__version__}")
    # Not required: a bare ``eventmesh`` prints this help and exits 0, as kubectl and
    # docker do (see main).
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    run = commands.add_parser("run", help="run the sidecar until SIGTERM or Ctrl-C")
    run.add_argument("-c", "--config", help="YAML config file (default: one local store)")
    run.add_argument(
        "--data-dir",
        default=os.environ.get("EVENTMESH_DATA_DIR") or DEFAULT_DATA_DIR,
        help="where the local store keeps events (default $EVENTMESH_DATA_DIR or "
        f"./{DEFAULT_DATA_DIR})",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set logging.level=debug (repeatable)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="sidecar processes sharing the ports (SO_REUSEPORT); kafka and nats "
        "connectors only (default 1)",
    )
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # one of --workers
    url = os.environ.get("EVENTMESH_URL", DEFAULT_URL)
    publish = commands.add_parser("publish", help="publish one event to a running sidecar")
    publish.add_argument("topic")
    publish.add_argument("--type", required=True, help="the event's type attribute")
    publish.add_argument("--source", required=True, help="the event's source attribute")
    publish.add_argument("--data", help="the data, as JSON (a bare word is taken as a string)")
    publish.add_argument("--id", help="the event id (default: a new UUID)")
    publish.add_argument("--subject", help="the subject attribute")
    publish.add_argument("--key", help="the partitionkey extension (per-key order)")
    publish.add_argument(
        "--ext", action="append", default=[], metavar="NAME=VALUE", help="an extension"
    )
    publish.add_argument("--url", default=url, help=f"the sidecar (default {url})")
    _add_credentials(publish)
    subscribe = commands.add_parser("subscribe", help="watch a topic on a running sidecar")
    subscribe.add_argument("topic")
    subscribe.add_argument("--group", default="eventmesh-cli", help="consumer group")
    subscribe.add_argument("--start", choices=["earliest", "latest"], default="latest")
    subscribe.add_argument("--filter", help="a filter spec as JSON (see docs/filters.md)")
    subscribe.add_argument("--count", type=int, help="stop after this many events")
    subscribe.add_argument("--url", default=url, help=f"the sidecar (default {url})")
    _add_credentials(subscribe)
    admin_url = os.environ.get("EVENTMESH_ADMIN_URL", DEFAULT_ADMIN_URL)
    functions = commands.add_parser("functions", help="list a running sidecar's functions")
    functions.add_argument(
        "--admin-url", default=admin_url, help=f"the sidecar's admin API (default {admin_url})"
    )
    _add_credentials(functions)
    _cli_dlq.add_parser(commands, url, _add_credentials)
    check = commands.add_parser(
        "check-config", help="check a config file and import its handlers, then exit"
    )
    check.add_argument("file", help="the YAML config file")
    commands.add_parser("version", help="print the version")
    return parser


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs; values are read as YAML scalars, as environment values are."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


async def _run(config: MeshConfig, reuse_port: bool = False) -> None:
    from eventmesh._loop import tune_gc
    from eventmesh.server.sidecar import Sidecar

    # Install the signal handlers first, so a SIGTERM that arrives while starting is not
    # the default one that kills the process without closing anything.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        _log_data_dirs(config)
        async with Sidecar(config, reuse_port=reuse_port) as sidecar:
            tune_gc()
            names = ", ".join(f"{n} ({c.type})" for n, c in config.connectors.items())
            log.info(
                "eventmesh %s running: http %s, grpc %s, admin %s; connectors %s; "
                "%d subscriptions; %d functions",
                __version__,
                sidecar.http_url,
                sidecar.grpc_target,
                sidecar.admin_url,
                names,
                len(config.subscriptions),
                len(config.functions),
            )
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                break
            await sidecar.close()
    log.info("eventmesh stopped")


def _log_data_dirs(config: MeshConfig) -> None:
    """The first line the daemon logs: where its events live."""
    dirs = sorted(
        {
            os.path.abspath(c.config.data_dir)
            for c in config.connectors.values()
            if c.type == "local"
        }
    )
    if dirs:
        log.info("eventmesh %s starting; data directory %s", __version__, ", ".join(dirs))
    else:
        kinds = ", ".join(f"{n} ({c.type})" for n, c in config.connectors.items())
        log.info("eventmesh %s starting; no data directory (connectors %s)", __version__, kinds)


def _connect(args: argparse.Namespace) -> Client:
    """The SDK client for ``--url`` with the credentials of the command line."""
    from eventmesh.client.connect import connect

    return connect(
        args.url,
        token=args.token,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
    )


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return msgspec.json.decode(text.encode())
    except msgspec.DecodeError:
        if what == "--data":
            return text  # a bare word is a string, as curl users expect
        raise ConfigError(f"{what} must be JSON, got {text!r}") from None


async def _publish(args: argparse.Namespace) -> None:
    from eventmesh.event import Event

    extensions: dict[str, Any] = {}
    for pair in args.ext:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--ext takes NAME=VALUE, got {pair!r}")
        extensions[name] = value
    if args.key is not None:
        extensions["partitionkey"] = args.key
    fields: dict[str, Any] = {"type": args.type, "source": args.source}
    if args.id:
        fields["id"] = args.id
    if args.subject:
        fields["subject"] = args.subject
    data = _json_arg(args.data, "--data")
    if data is not None:
        fields["data"] = data
    event = Event(**fields, extensions=extensions)
    async with _connect(args) as client:
        await client.publish(args.topic, event)
    print(event.id)


async def _subscribe(args: argparse.Namespace) -> None:
    from eventmesh.event import encode_json

    view = _LiveView() if sys.stdout.isatty() else None
    seen = 0
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with _connect(args) as client, anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(stop_on_signal)
            sub = client.subscribe(
                args.topic,
                args.group,
                filter=_json_arg(args.filter, "--filter"),
                start=args.start,
                name=f"cli {args.topic}/{args.group}",
            )
            async with sub:
                async for delivery in sub:
                    if view is not None:
                        view.show(delivery.event, delivery.attempt)
                    else:
                        sys.stdout.write(encode_json(delivery.event).decode() + "\n")
                        sys.stdout.flush()
                    await delivery.ack()
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        break
            tg.cancel_scope.cancel()


async def _dlq(args: argparse.Namespace) -> None:
    async with _connect(args) as client:
        await _cli_dlq.run(args, client)


async def _functions(args: argparse.Namespace) -> None:
    with needs_extra("the admin API client"):
        import aiohttp

    from eventmesh._status import error_from_problem
    from eventmesh.client._remote import bearer, check_tls_files, ssl_context, warn_clear_text

    base = args.admin_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"--admin-url must be http://host:port or https://host:port, got {base}")
    tls = base.startswith("https://")
    files = {"ca_file": args.ca_file, "cert_file": args.cert_file, "key_file": args.key_file}
    check_tls_files(base, tls=tls, **files)
    headers = {}
    if args.token is not None:
        headers["Authorization"] = bearer(args.token)
        warn_clear_text(base)
    url = base + "/functions"
    connector = aiohttp.TCPConnector(ssl=ssl_context(*files.values())) if tls else None
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10), headers=headers, connector=connector
            ) as http,
            http.get(url) as response,
        ):
            body = await response.read()
            if response.status != 200:
                try:
                    problem = msgspec.json.decode(body)
                except msgspec.DecodeError:
                    problem = {"detail": f"{url} answered {response.status} {response.reason}"}
                raise error_from_problem(problem, response.status)
            listed = msgspec.json.decode(body)["functions"]
    except aiohttp.ClientError as exc:
        raise EventMeshError(f"cannot reach the admin API at {url} ({exc})") from exc
    if not sys.stdout.isatty():
        for item in listed:
            sys.stdout.write(msgspec.json.encode(item).decode() + "\n")
        sys.stdout.flush()
        return
    with needs_extra("the terminal view"):
        from rich.console import Console
        from rich.table import Table

    table = Table("name", "kind", "topic", "state", "invocations", "failures", "timeouts",
                  "reply to", "workers")  # fmt: skip
    for item in listed:
        table.add_row(
            item["name"],
            item["kind"],
            item["topic"],
            item["state"],
            str(item["invocations"]),
            str(item["failures"]),
            str(item["timeouts"]),
            item["reply_to"] or "-",
            " ".join(map(str, item["workers"])) or "-",
        )
    Console().print(table)


class _LiveView:
    """One readable line per event, with its data below, for a terminal."""

    def __init__(self) -> None:
        with needs_extra("the terminal view"):
            from rich.console import Console

        self.console = Console()

    def show(self, event: Any, attempt: int) -> None:
        """Print ``event``. Its attributes are the publisher's text, shown as they are: a
        ``Text``, never read as markup or emoji codes (a type ``[/x]`` raised
        MarkupError before the ack), with control characters escaped."""
        from rich.pretty import Pretty
        from rich.text import Text

        from eventmesh._logging import escape_controls

        when = event.time.isoformat(timespec="seconds") if event.time else "-"
        line = Text.assemble(
            (when, "dim"),
            " ",
            (escape_controls(str(event.type)), "bold cyan"),
            " ",
            (escape_controls(str(event.source)), "green"),
            " ",
            (f"id={escape_controls(str(event.id))}", "dim"),
        )
        if attempt > 1:
            line.append(f" (attempt {attempt})", "yellow")
        self.console.print(line)
        if event.data is not None:
            self.console.print(Pretty(event.data), style="default")


def _told(error: EventMeshError) -> str:
    """An error as one line for the terminal; a refused credential says how to give one."""
    text = " ".join(str(error).split())
    if isinstance(error, UnauthenticatedError):
        text += " (pass --token, or set EVENTMESH_TOKEN)"
    return text


def _only_error(group: BaseExceptionGroup[BaseException]) -> EventMeshError | None:
    """The first of a group's errors when every one is an EventMeshError (a refusal to
    tell in one line), else None (a bug, whose traceback should show)."""
    errors, rest = group.split(EventMeshError)
    while errors is not None and rest is None:
        first = errors.exceptions[0]
        if not isinstance(first, BaseExceptionGroup):
            return first if isinstance(first, EventMeshError) else None
        errors = first
    return None


def _put_on_import_path(config_file: str | None) -> None:
    """Let handlers be imported as ``python`` would from where the user stands: the config
    file's folder first, then the working directory (an installed ``eventmesh`` script,
    unlike ``python -m``, has neither on ``sys.path``). Process workers inherit the path."""
    folders = [os.getcwd()]
    if config_file is not None:
        folders.insert(0, os.path.dirname(os.path.abspath(config_file)))
    for folder in reversed(folders):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare ``eventmesh``: the commands, one line each
        parser.print_help()
        return 0
    if args.command == "version":
        print(f"eventmesh {__version__}")
        return 0
    if args.command in ("publish", "subscribe", "functions", "dlq"):
        command = {"publish": _publish, "subscribe": _subscribe, "functions": _functions}.get(
            args.command, _dlq
        )
        try:
            anyio.run(command, args, backend="asyncio", backend_options=backend_options())
        except EventMeshError as exc:
            print(f"eventmesh {args.command}: {_told(exc)}", file=sys.stderr)
            return 1
        except BaseExceptionGroup as group:  # from subscribe's task group
            error = _only_error(group)
            if error is None:
                raise
            print(f"eventmesh {args.command}: {_told(error)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        return 0
    try:
        if args.command == "run":  # before the config: without the extra nothing can run
            with needs_extra("the sidecar"):
                import eventmesh.server.sidecar
        if args.command == "check-config":
            _put_on_import_path(args.file)
            config = load_config(args.file, env=os.environ, import_handlers=True)
            print(
                f"{args.file}: ok ({len(config.connectors)} connectors, "
                f"{len(config.topics)} topics, {len(config.subscriptions)} subscriptions, "
                f"{len(config.functions)} functions)"
            )
            return 0
        _put_on_import_path(args.config)
        config = load_config(
            args.config,
            env=os.environ,
            overrides=_overrides(args.set),
            default_connectors={"default": {"type": "local"}},
        )
        config = with_data_dir(config, args.data_dir)
        if args.workers != 1:  # refused before anything starts (eventmesh/_workers.py)
            from eventmesh._workers import check_workers

            check_workers(config, args.workers)
        if config.tracing.on:  # said before anything starts, as a missing sidecar extra is
            with needs_extra("tracing (the tracing: config)"):
                import eventmesh.observability.tracing  # noqa: F401
    except EventMeshError as exc:
        print(f"eventmesh: {exc}", file=sys.stderr)
        return 2
    from eventmesh._logging import configure_logging

    configure_logging(
        config.logging.level,
        config.logging.format,
        enabled=config.logging.enabled,
        payload=config.logging.payload,
    )
    try:
        if args.workers != 1:
            from eventmesh._workers import supervise, worker_argv

            return supervise(
                [
                    worker_argv(
                        config=args.config, data_dir=args.data_dir, overrides=args.set, index=i
                    )
                    for i in range(args.workers)
                ]
            )
        reuse_port = args.worker_index is not None
        anyio.run(_run, config, reuse_port, backend="asyncio", backend_options=backend_options())
    except EventMeshError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
