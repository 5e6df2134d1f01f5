"""``eventmesh run --workers N``: N sidecar processes sharing one set of ports.

The parent process starts N copies of ``eventmesh run`` (the same config file, data
directory and ``--set`` overrides) and serves nothing itself. Each worker binds the
HTTP, gRPC and admin ports with ``SO_REUSEPORT``, so the kernel spreads new connections
across the workers, and each joins the same consumer groups on the broker, which shares
the partitions (Kafka) or messages (NATS queue groups, JetStream durable consumers)
between them. The admin port is shared the same way: ``/healthz`` and ``/readyz`` are
answered by whichever worker takes the connection, and ``/metrics`` shows that worker's
figures (scrape each worker through its own port to see them all; docs/sidecar.md).

Only broker-backed connectors can be shared (:func:`check_workers`): a ``memory``
connector keeps events inside one process, and a ``local`` one is one process's SQLite
store, whose directory the first process locks; both are refused, as are listeners on
port 0 (each process would pick a different port) and systems without SO_REUSEPORT.

Supervision (:func:`supervise`): SIGTERM and SIGINT are forwarded to every worker,
which shuts down as a single sidecar does, and the parent exits once all have (0 when
all exited cleanly). A worker that exits while no stop was asked for stops the whole
run: the others get SIGTERM and the parent exits 1, so the process manager that
started it (systemd, Kubernetes) restarts it whole, rather than this process
restarting one worker in a loop. On Linux a worker also gets SIGTERM when the parent
dies of a signal it cannot forward (SIGKILL).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Final

from eventmesh.config import MeshConfig
from eventmesh.errors import ConfigError

__all__ = ["MAX_WORKERS", "check_workers", "supervise", "worker_argv"]

log = logging.getLogger(__name__)

MAX_WORKERS: Final = 256
"""The most workers ``--workers`` takes."""
STOP_TIMEOUT: Final = 30.0
"""Seconds a worker is given to stop after SIGTERM before it is killed."""

_IN_PROCESS: Final = {
    "memory": "keeps its events inside one process, so each worker would hold events "
    "the others never see",
    "local": "is one process's SQLite store: the first process to open its directory "
    "locks it, so a second worker could not start",
}


def check_workers(config: MeshConfig, workers: int) -> None:
    """Raise ConfigError unless ``config`` can run as ``workers`` processes sharing its
    ports (module docstring); nothing to check for one worker."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}, got {workers}")
    if workers == 1:
        return
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError(
            f"--workers {workers} needs SO_REUSEPORT, which this system does not have; "
            "run one worker per port instead"
        )
    for name, connector in config.connectors.items():
        why = _IN_PROCESS.get(connector.type)
        if why is not None:
            raise ConfigError(
                f"--workers {workers} cannot share connector {name!r}: type "
                f"{connector.type} {why}. Use a broker-backed connector (kafka, nats) for "
                "every connector, or run one worker",
                key=f"connectors.{name}.type",
            )
    server = config.server
    for listener, port in (
        ("http", server.http.port),
        ("grpc", server.grpc.port),
        ("admin", server.admin.port),
    ):
        if port == 0:
            raise ConfigError(
                f"--workers {workers} needs fixed ports, but server.{listener}.port is 0 "
                "(each worker would pick a port of its own); give it a port number",
                key=f"server.{listener}.port",
            )


def worker_argv(
    *, config: str | None, data_dir: str, overrides: Sequence[str], index: int
) -> list[str]:
    """The command line of worker ``index``: ``eventmesh run`` with the parent's config
    file, data directory and overrides, bound with SO_REUSEPORT."""
    argv = [sys.executable, "-m", "eventmesh.cli", "run", "--data-dir", data_dir]
    if config is not None:
        argv += ["--config", config]
    for pair in overrides:
        argv += ["--set", pair]
    return [*argv, "--worker-index", str(index)]


def supervise(commands: Sequence[Sequence[str]]) -> int:
    """Run one worker per command until a signal or a worker's exit (module docstring);
    the exit status."""
    stopping = False
    procs: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("received %s; stopping %d workers", signal.Signals(signum).name, len(procs))
        stopping = True
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for index, command in enumerate(commands):
            if stopping:
                break
            proc = subprocess.Popen(
                list(command), preexec_fn=functools.partial(_die_with, os.getpid())
            )
            procs[proc.pid] = (index, proc)
            log.info("worker %d started (pid %d)", index, proc.pid)
        while procs:
            pid, wait_status = os.waitpid(-1, 0)
            if pid not in procs:
                continue
            index, proc = procs.pop(pid)
            proc.returncode = os.waitstatus_to_exitcode(wait_status)
            code = proc.returncode
            if stopping:
                log.info("worker %d (pid %d) stopped with status %d", index, pid, code)
                if code != 0:
                    status = 1
                continue
            log.error(
                "worker %d (pid %d) exited with status %d; stopping the other workers "
                "(the run stops as a whole, for its process manager to restart)",
                index,
                pid,
                code,
            )
            status = 1
            forward(signal.SIGTERM, None)
    finally:
        _stop_all([proc for _, proc in procs.values()])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("eventmesh stopped (%d workers)", len(commands))
    return status


def _die_with(parent: int) -> None:
    """In a new worker, before it runs: on Linux, have the kernel send it SIGTERM when
    ``parent`` dies (even of SIGKILL, which the parent cannot forward), so no worker
    outlives its run; a parent that died between the fork and this call is already
    gone, so the worker exits at once. Elsewhere nothing: a worker then outlives a
    killed parent."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)


def _stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM what still runs, then SIGKILL what outlives ``STOP_TIMEOUT``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
