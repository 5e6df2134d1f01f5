"""HTTP ingress: the sidecar's publish route against a bare aiohttp handler, same run.

The server runs in a child process of its own (multiprocessing, spawn) so that it has a
core to itself; this process is the load generator: one aiohttp ClientSession with a
pool of ``CONCURRENCY`` connections and as many requesters. The same client, requests
and concurrency hit the eventmesh sidecar (``Sidecar`` over the in-memory connector)
and a bare aiohttp handler that reads the body and answers 202.

    python benchmarks/run.py http             # the rows of docs/benchmarks.md
    python benchmarks/bench_http.py --profile # cProfile of the batched path, server side

One more row prices authorization: the batched load against a sidecar with ``auth:`` (a
static token) and an ``acl:`` rule, and against one without, both running, measured in
turns (off, on, off, on, ...), the best run of each compared.

The child-process helpers here (:func:`serve`, :class:`Server`) are shared with
bench_grpc.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import functools
import hashlib
import importlib
import io
import logging
import multiprocessing
import pstats
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

import aiohttp
import msgspec
import uvloop
from aiohttp import web
from harness import Measure, Row, Section, cli, interleave

from eventmesh import Event
from eventmesh.bindings.http import to_batch, to_binary

TITLE = "HTTP ingress (publish through the sidecar)"
BATCH: Final = 100
CONCURRENCY: Final = 16
RUNS: Final = 3
TOPIC: Final = "bench"
PATH: Final = f"/topics/{TOPIC}/events"
MAX_EVENTS: Final = 100_000  # the memory connector's default retention; a full topic
# without readers releases what it holds (see MemoryConnector), so memory stays bounded.
AUTH_TOKEN: Final = "bench-0123456789abcdef"
AUTH_RUNS: Final = 7
"""Turns of each of auth off and auth on: the difference sought is a few percent."""


def sidecar_config(*, auth: bool = False) -> dict[str, Any]:
    """An in-memory sidecar on free ports; with ``auth``, one static token whose
    principal an ACL rule allows to publish to the topic."""
    config: dict[str, Any] = {
        "connectors": {"default": {"type": "memory", "max_events": MAX_EVENTS}},
        "server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}},
        "logging": {"level": "warning"},
    }
    if auth:
        digest = hashlib.sha256(AUTH_TOKEN.encode()).hexdigest()
        config["auth"] = {"tokens": [{"principal": "bench", "sha256": digest}]}
        config["acl"] = [{"principal": "bench", "allow": ["publish"], "topics": [TOPIC]}]
    return config


# -- servers, each run in a child process --------------------------------------------------------


@contextlib.asynccontextmanager
async def _sidecar_http(auth: bool = False) -> AsyncIterator[str]:
    from eventmesh._loop import tune_gc
    from eventmesh.server.sidecar import Sidecar

    async with Sidecar(sidecar_config(auth=auth)) as sidecar:
        tune_gc()  # as `eventmesh run` does
        yield sidecar.http_url


@contextlib.asynccontextmanager
async def _bare_http() -> AsyncIterator[str]:
    async def publish(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202)

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/topics/{topic}/events", publish)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _bare_http_decoding() -> AsyncIterator[str]:
    """The bare handler that also decodes the body as JSON (msgspec, into dicts): the
    least a handler that reads the events can do, the baseline of the goals."""
    decode = msgspec.json.decode

    async def publish(request: web.Request) -> web.Response:
        decode(await request.read())
        return web.Response(status=202)

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/topics/{topic}/events", publish)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


SERVERS: dict[str, Callable[[], AbstractAsyncContextManager[str]]] = {
    "sidecar-http": _sidecar_http,
    "sidecar-http-auth": functools.partial(_sidecar_http, auth=True),
    "bare-http": _bare_http,
    "bare-http-decode": _bare_http_decoding,
}
"""Servers by name: each an async context manager giving the address to load."""


def _child(module: str, kind: str, conn: Connection) -> None:
    """The child process: serve ``kind`` until told to stop; measure between go and stop."""
    logging.basicConfig(level=logging.WARNING)
    # A topic nobody reads fills up and is released now and then; that is expected here.
    logging.getLogger("eventmesh.connectors.memory").setLevel(logging.ERROR)
    servers: dict[str, Callable[[], AbstractAsyncContextManager[str]]]
    servers = importlib.import_module(module).SERVERS
    uvloop.run(_child_main(servers[kind], conn))


async def _child_main(
    server: Callable[[], AbstractAsyncContextManager[str]], conn: Connection
) -> None:
    loop = asyncio.get_running_loop()
    async with server() as address:
        conn.send(address)
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "quit":
                break
            profiler = cProfile.Profile() if command == "profile" else None
            cpu = time.process_time()
            if profiler is not None:
                profiler.enable()
            await loop.run_in_executor(None, conn.recv)  # "stop"
            if profiler is not None:
                profiler.disable()
            used = time.process_time() - cpu
            conn.send((used, _report(profiler) if profiler is not None else ""))


def _report(profiler: cProfile.Profile, top: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    out.write("== by own time (tottime)\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write("== by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


@dataclass
class Server:
    """A server in a child process: its address, and CPU measured around a load."""

    address: str
    conn: Connection

    @contextlib.contextmanager
    def measuring(self, profile: bool = False) -> Iterator[dict[str, Any]]:
        """Around a load: fills ``cpu`` (the server's CPU seconds) and ``profile``."""
        result: dict[str, Any] = {}
        self.conn.send("profile" if profile else "go")
        try:
            yield result
        finally:
            self.conn.send("stop")
            result["cpu"], result["profile"] = self.conn.recv()


@contextlib.contextmanager
def serve(module: str, kind: str) -> Iterator[Server]:
    """Start server ``kind`` of ``module``'s SERVERS in a child process, stop it after."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_child, args=(module, kind, theirs), daemon=True)
    process.start()
    try:
        if not ours.poll(120):
            raise RuntimeError(f"the {kind} server did not start within 120 s")
        yield Server(ours.recv(), ours)
        ours.send("quit")
        process.join(30)
    finally:
        if process.is_alive():
            process.terminate()
            process.join(10)


# -- the load --------------------------------------------------------------------------------------


Request = tuple[dict[str, str], bytes]


def requests(mode: str, distinct: int) -> tuple[list[Request], int]:
    """``distinct`` pre-encoded requests of ``mode``, and the events in each."""
    if mode == "binary":
        return [to_binary(_event(i)) for i in range(distinct)], 1
    batches = [to_batch([_event(i * BATCH + j) for j in range(BATCH)]) for i in range(distinct)]
    return batches, BATCH


def _event(n: int) -> Event:
    return Event(type="bench", source="/bench", data={"n": n})


async def load(
    url: str, pool: list[Request], total: int, concurrency: int, around: Callable[[], Any]
) -> tuple[float, float]:
    """Send ``total`` requests from ``concurrency`` requesters; (wall s, client CPU s).

    ``around()`` is a context manager entered after a warm-up, around the timed part.
    """
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def send(headers: dict[str, str], body: bytes) -> None:
            async with session.post(
                PATH, data=body, headers=headers, skip_auto_headers=("Content-Type",)
            ) as response:
                await response.read()
                if response.status != 202:
                    raise RuntimeError(f"answered {response.status}: {await response.text()}")

        async def requester(counter: Iterator[int]) -> None:
            for i in counter:
                await send(*pool[i % len(pool)])

        async def run(count: int) -> None:
            counter = iter(range(count))  # shared: each request is sent once
            async with asyncio.TaskGroup() as tg:
                for _ in range(concurrency):
                    tg.create_task(requester(counter))

        await run(concurrency * 4)  # warm-up: connections open, code paths hot
        with around():
            cpu = time.process_time()
            start = time.perf_counter()
            await run(total)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu
    return elapsed, cpu


Runner = Callable[[str, Any, int, int, Callable[[], Any]], Coroutine[Any, Any, tuple[float, float]]]
"""A load generator: (address, request pool, total, concurrency, around) -> (wall, CPU)."""


@dataclass
class Figure:
    """One measured load: events/s, and CPU per event on each side."""

    rate: float
    server_us: float
    client_us: float


def measure(
    server: Server,
    pool: list[Any],
    per_request: int,
    total: int,
    runner: Runner = load,
    runs: int = RUNS,
) -> Figure:
    """The best of ``runs`` loads of ``total`` requests against ``server``."""
    figures = [_once(server, pool, per_request, total, runner) for _ in range(runs)]
    return max(figures, key=lambda figure: figure.rate)


def _once(server: Server, pool: list[Any], per_request: int, total: int, runner: Runner) -> Figure:
    measured: dict[str, Any] = {}

    @contextlib.contextmanager
    def around() -> Iterator[None]:
        with server.measuring() as result:
            yield
        measured.update(result)

    elapsed, client_cpu = uvloop.run(runner(server.address, pool, total, CONCURRENCY, around))
    events = total * per_request
    return Figure(events / elapsed, measured["cpu"] / events * 1e6, client_cpu / events * 1e6)


def profile(module: str, kind: str, runner: Runner, pool: list[Any], total: int) -> str:
    """cProfile of the server while it takes ``total`` requests of ``pool``."""
    with serve(module, kind) as server:
        result: dict[str, Any] = {}

        @contextlib.contextmanager
        def around() -> Iterator[None]:
            with server.measuring(profile=True) as measured:
                yield
            result.update(measured)

        uvloop.run(runner(server.address, pool, total, CONCURRENCY, around))
    return str(result["profile"])


# -- the scenario ------------------------------------------------------------------------------


def main(quick: bool) -> Section:
    singles = 3_000 if quick else 10_000
    batches = 300 if quick else 2_000
    modes = [
        ("binary", *requests("binary", 1_000), singles),
        ("batch", *requests("batch", 50), batches),
    ]
    section = Section(TITLE)
    kinds = ("bare-http-decode", "sidecar-http")
    with serve("bench_http", kinds[0]) as bare, serve("bench_http", kinds[1]) as sidecar:
        for mode, pool, per_request, total in modes:
            print(f"  {mode} mode", flush=True)
            medians = interleave(
                RUNS,
                {
                    kind: functools.partial(_round, server, pool, per_request, total)
                    for kind, server in zip(kinds, (bare, sidecar), strict=True)
                },
            )
            ours, base = medians["sidecar-http"], medians["bare-http-decode"]
            what = (
                f"binary mode, 1 event per request, {total:,} requests"
                if mode == "binary"
                else f"batch mode, {BATCH} events per request, {total * per_request:,} events"
            )
            section.rows.append(
                Row(
                    name=what,
                    value=ours.rate,
                    unit="events/s",
                    baseline=base.rate,
                    baseline_name="bare aiohttp handler decoding the JSON, 202",
                    goal="150,000 events/s or more, 0.40x or more" if mode == "batch" else "",
                    load=f"{ours.load} (baseline {base.load})",
                )
            )
            section.notes.append(
                f"CPU per event, {mode} mode (medians): sidecar {ours.cpu_us:,.1f} µs (bare "
                f"handler {base.cpu_us:,.1f} µs); rates of each round, sidecar/bare: "
                + ", ".join(
                    f"{a.rate:,.0f}/{b.rate:,.0f}"
                    for a, b in zip(ours.rounds, base.rounds, strict=True)
                )
                + "."
            )
    section.rows.append(_authorization(quick, section.notes))
    section.notes += [
        "The servers run in child processes of their own (multiprocessing, spawn, uvloop), "
        "both started before the first round; this process is the load generator, so on a "
        "2-core machine the loaded server and the client each have a core. "
        f"The client is one aiohttp ClientSession with {CONCURRENCY} pooled keep-alive "
        f"connections and {CONCURRENCY} requesters, sending pre-encoded requests (distinct "
        "events) and reading each answer; the same client and requests load both servers.",
        "The sidecar is eventmesh.server.sidecar.Sidecar over the in-memory connector: a "
        "request is decoded with the CloudEvents HTTP binding, published, and answered 202 "
        '{"stored": N, "ids": [...]} once stored. The topic has no readers, so the '
        f"connector releases its {MAX_EVENTS:,} retained events whenever it fills.",
        "The baseline handler reads the body, decodes it as JSON with msgspec (into dicts) "
        "and answers an empty 202: what aiohttp and the JSON decoding alone cost per "
        f"request. The two take turns, {RUNS} rounds each after a warm-up (harness."
        "interleave); each figure is the median of its rounds, with the load average "
        "beside it.",
        "Server CPU is the child's process time over the timed part; client CPU is this "
        "process's. When the sidecar's CPU per event times the rate is near one core "
        "second per second, the server is the bottleneck; otherwise the client is.",
        "Reproduce: python benchmarks/run.py http (or python benchmarks/bench_http.py).",
    ]
    return section


def _round(server: Server, pool: list[Any], per_request: int, total: int) -> Measure:
    """One timed load of ``server`` as a harness round: events/s and server CPU per event."""
    figure = _once(server, pool, per_request, total, load)
    return Measure(rate=figure.rate, cpu_us=figure.server_us)


def _authorization(quick: bool, notes: list[str]) -> Row:
    """The batched rate with auth on against auth off: two sidecars running side by side,
    loaded in turns, the best of ``AUTH_RUNS`` turns each."""
    batches = 1_000 if quick else 2_000
    pool, per_request = requests("batch", 50)
    bearer = f"Bearer {AUTH_TOKEN}"
    signed = [({**headers, "Authorization": bearer}, body) for headers, body in pool]
    off: list[Figure] = []
    on: list[Figure] = []
    with (
        serve("bench_http", "sidecar-http") as plain,
        serve("bench_http", "sidecar-http-auth") as guarded,
    ):
        for _ in range(AUTH_RUNS):
            off.append(_once(plain, pool, per_request, batches, load))
            on.append(_once(guarded, signed, per_request, batches, load))
    best_off = max(off, key=lambda figure: figure.rate)
    best_on = max(on, key=lambda figure: figure.rate)
    notes.append(
        f"Authorization, batch mode: each request carries 'Authorization: Bearer <token>' "
        "to a sidecar configured with auth.tokens (one SHA-256 digest) and one acl rule "
        "granting publish on the topic; the baseline is the same sidecar without auth:, "
        f"running at the same time and loaded in turns with it ({AUTH_RUNS} turns each, "
        f"{batches * per_request:,} events a turn, the best of each compared). CPU per "
        f"event: {best_on.server_us:,.1f} µs with auth, {best_off.server_us:,.1f} µs "
        f"without; rates of each turn, off/on: "
        + ", ".join(f"{a.rate:,.0f}/{b.rate:,.0f}" for a, b in zip(off, on, strict=True))
        + "."
    )
    return Row(
        name=f"batch mode with auth on (a static token and an ACL rule), "
        f"{batches * per_request:,} events",
        value=best_on.rate,
        unit="events/s",
        baseline=best_off.rate,
        baseline_name="the same sidecar without auth, same run, in turns",
        goal="0.95x or more (authorization costs at most 5 %)",
    )


def _profile(quick: bool) -> str:
    pool, _ = requests("batch", 50)
    return profile("bench_http", "sidecar-http", load, pool, 300 if quick else 1_000)


if __name__ == "__main__":
    sys.exit(cli(__doc__, main, _profile))
