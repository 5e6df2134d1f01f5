"""The ``eventmesh`` command.

::

    eventmesh run [-c mesh.yaml] [--set key=value ...]   run a mesh until SIGTERM or Ctrl-C
    eventmesh check-config mesh.yaml                      check a config file and exit
    eventmesh version                                     print the version

Configuration precedence: ``--set`` flags, then ``EVENTMESH__...`` environment variables,
then the file, then the defaults (see eventmesh.config).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import yaml

from eventmesh._loop import backend_options
from eventmesh._version import __version__
from eventmesh.config import MeshConfig, load_config
from eventmesh.errors import ConfigError, EventMeshError

__all__ = ["main"]

log = logging.getLogger("eventmesh")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventmesh", description="A CloudEvents mesh for Python services."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run a mesh until SIGTERM or Ctrl-C")
    run.add_argument("-c", "--config", help="YAML config file (default: one in-memory connector)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set logging.level=debug (repeatable)",
    )
    check = commands.add_parser("check-config", help="check a config file and exit")
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


async def _run(config: MeshConfig) -> None:
    from eventmesh.mesh import Mesh

    # Install the signal handlers first, so a SIGTERM that arrives while starting is not
    # the default one that kills the process without closing anything.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with Mesh(config) as mesh:
            names = ", ".join(f"{n} ({c.type})" for n, c in config.connectors.items())
            log.info(
                "eventmesh %s running: connectors %s; %d subscriptions",
                __version__,
                names,
                len(config.subscriptions),
            )
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                break
            await mesh.close(timeout=float(config.server.shutdown_timeout))
    log.info("eventmesh stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"eventmesh {__version__}")
        return 0
    try:
        if args.command == "check-config":
            config = load_config(args.file, env=os.environ)
            print(
                f"{args.file}: ok ({len(config.connectors)} connectors, "
                f"{len(config.topics)} topics, {len(config.subscriptions)} subscriptions)"
            )
            return 0
        config = load_config(args.config, env=os.environ, overrides=_overrides(args.set))
    except EventMeshError as exc:
        print(f"eventmesh: {exc}", file=sys.stderr)
        return 2
    from eventmesh._logging import configure_logging

    configure_logging(config.logging.level, config.logging.format)
    try:
        anyio.run(_run, config, backend="asyncio", backend_options=backend_options())
    except EventMeshError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
