"""`eventmesh run --workers`: batched HTTP ingress and the Kafka route, 1 against 2 workers.

    python benchmarks/bench_workers.py           # needs KAFKA_BOOTSTRAP (scripts/kafka.sh env)
    python benchmarks/bench_workers.py --quick

Each round starts ``eventmesh run -c <kafka config> --workers N`` as a subprocess, once
with N = 1 and once with N = 2 (the two take turns, median of the rounds):

* ingress: 16 concurrent requesters POST pre-encoded batches of 100 events to the
  shared HTTP port; each 202 means Kafka stored the batch (acks=all);
* route: a backlog on a 4-partition topic is delivered by a webhook subscription
  (batch mode) to an aiohttp receiver; the rate runs from the moment the group has a
  member per worker to the last event received, so start-up and the group's
  rebalances are not counted.

The load generator, the receiver and the broker share the machine's cores with the
workers, as they would on one host.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiokafka.admin import AIOKafkaAdminClient
from bench_webhook import _Receiver
from harness import Row, Section, cli, load_average

from eventmesh import Event, Mesh
from eventmesh.bindings.http import to_batch

TITLE = "Workers (eventmesh run --workers, Kafka)"
BATCH = 100
REQUESTERS = 16


def _bootstrap() -> str:
    address = os.environ.get("KAFKA_BOOTSTRAP")
    if not address:
        raise SystemExit("set KAFKA_BOOTSTRAP: export $(scripts/kafka.sh env)")
    return address


def _kafka(bootstrap: str) -> dict[str, Any]:
    return {
        "type": "kafka",
        "bootstrap_servers": bootstrap,
        "partitions": 4,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 300,
    }


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


class _Run:
    """``eventmesh run --workers N`` on free ports with ``config`` (dict, written as YAML)."""

    def __init__(self, config: dict[str, Any], workers: int) -> None:
        self.http, grpc, self.admin = _free_ports(3)
        config["server"] = {
            "http": {"port": self.http},
            "grpc": {"port": grpc},
            "admin": {"port": self.admin},
        }
        config["logging"] = {"level": "warning"}
        self.dir = tempfile.TemporaryDirectory()
        path = Path(self.dir.name) / "mesh.yaml"
        path.write_text(json.dumps(config), encoding="utf-8")
        self.command = [
            sys.executable, "-m", "eventmesh.cli", "run", "-c", str(path), "--workers", str(workers)
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log = Path(self.dir.name) / "run.log"
        with self.log.open("wb") as out:
            return subprocess.Popen(
                self.command, cwd=self.dir.name, stdout=out, stderr=subprocess.STDOUT
            )

    async def __aenter__(self) -> _Run:
        self.proc = self._spawn()
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    tail = self.log.read_text(errors="replace").splitlines()[-15:]
                    raise RuntimeError(
                        f"eventmesh run exited with {self.proc.returncode}:\n" + "\n".join(tail)
                    )
                try:
                    async with session.get(f"http://127.0.0.1:{self.admin}/readyz") as answer:
                        if answer.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("eventmesh run did not become ready in 120 s")

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.dir.cleanup()


async def _ingress(bootstrap: str, workers: int, requests: int) -> float:
    """Events/s through the shared HTTP port into Kafka."""
    topic = f"bench-ingress-{uuid.uuid4().hex[:8]}"
    bodies = [
        to_batch([Event(type="bench", source="/bench", data={"n": n}) for n in range(i, i + BATCH)])
        for i in range(0, 50 * BATCH, BATCH)
    ]
    async with _Run({"connectors": {"default": _kafka(bootstrap)}}, workers) as run:
        url = f"http://127.0.0.1:{run.http}/topics/{topic}/events"
        connector = aiohttp.TCPConnector(limit=REQUESTERS)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def send(count: int) -> None:
                counter = iter(range(count))

                async def requester() -> None:
                    for i in counter:
                        headers, body = bodies[i % len(bodies)]
                        async with session.post(url, data=body, headers=headers) as answer:
                            if answer.status != 202:
                                raise RuntimeError(f"{answer.status}: {await answer.text()}")

                async with asyncio.TaskGroup() as tg:
                    for _ in range(REQUESTERS):
                        tg.create_task(requester())

            await send(REQUESTERS * 8)  # warm-up: connections to both workers, topic made
            start = time.perf_counter()
            await send(requests)
            return requests * BATCH / (time.perf_counter() - start)


async def _members(bootstrap: str, group: str, count: int) -> None:
    """Wait until the Kafka consumer group ``group`` has ``count`` members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            described = await admin.describe_consumer_groups([group])
            if len(described[0].groups[0][5]) == count:  # (error, id, state, .., members)
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"group {group} did not reach {count} members in 120 s")
    finally:
        await admin.close()


async def _route(bootstrap: str, workers: int, events: int) -> float:
    """Events/s from a Kafka backlog through the workers' webhook subscription, counted
    from the moment the group has a member per worker (its rebalances done) to the last
    event received."""
    topic = f"bench-route-{uuid.uuid4().hex[:8]}"
    group = f"route-{uuid.uuid4().hex[:8]}"
    async with Mesh({"connectors": {"default": _kafka(bootstrap)}}) as mesh:
        for i in range(0, events, 1000):
            batch = [
                Event(
                    type="bench",
                    source="/bench",
                    data={"n": n},
                    extensions={"partitionkey": f"k{n % 64}"},  # spread over the partitions
                )
                for n in range(i, i + 1000)
            ]
            await mesh.publish(topic, batch)
    async with _Receiver() as receiver:
        receiver.expect(events)
        subscription = {
            "name": "route",
            "topic": topic,
            "group": group,
            "start": "earliest",
            "sink": {"webhook": receiver.url, "mode": "batch"},
        }
        config = {"connectors": {"default": _kafka(bootstrap)}, "subscriptions": [subscription]}
        async with _Run(config, workers):
            await _members(bootstrap, group, workers)
            count, start = receiver.clock.count, time.perf_counter()
            await asyncio.wait_for(receiver.done.wait(), 300)
        clock = receiver.clock
        if count > events // 2:  # most went before the group settled: the whole span
            return clock.measure().rate
        return (clock.count - count) / (clock.last - start)


def main(quick: bool) -> Section:
    bootstrap = _bootstrap()
    requests = 300 if quick else 1_000
    events = 30_000 if quick else 100_000
    rounds = 3 if quick else 5
    results: dict[str, list[float]] = {}
    loads: list[float] = []
    for round_ in range(rounds):
        for workers in (1, 2):
            for name, run in (
                ("ingress", lambda w=workers: uvloop.run(_ingress(bootstrap, w, requests))),
                ("route", lambda w=workers: uvloop.run(_route(bootstrap, w, events))),
            ):
                rate = run()
                results.setdefault(f"{name}-{workers}", []).append(rate)
                loads.append(load_average())
                print(
                    f"    round {round_ + 1} {name}, {workers} worker(s): {rate:,.0f} events/s, "
                    f"load {loads[-1]:.2f}",
                    flush=True,
                )
    load = f"{min(loads):.1f}-{max(loads):.1f}"
    median = {name: statistics.median(rates) for name, rates in results.items()}
    section = Section(TITLE)
    section.rows += [
        Row(
            name=f"HTTP batch ingress into Kafka, 2 workers, {requests * BATCH:,} events",
            value=median["ingress-2"],
            unit="events/s",
            baseline=median["ingress-1"],
            baseline_name="the same with 1 worker",
            goal="above 1x (scales from 1 to 2 workers)",
            load=load,
        ),
        Row(
            name=f"Kafka route to a webhook (batch mode), 2 workers, {events:,} events",
            value=median["route-2"],
            unit="events/s",
            baseline=median["route-1"],
            baseline_name="the same with 1 worker",
            goal="above 1x (scales from 1 to 2 workers)",
            load=load,
        ),
    ]
    section.notes += [
        f"eventmesh run --workers 1 and --workers 2 over the team's Kafka broker (topics "
        f"of 4 partitions), taking turns, median of {rounds} rounds. Ingress: "
        f"{REQUESTERS} requesters POST pre-encoded batches of {BATCH} events "
        "(application/cloudevents-batch+json) to the shared port; SO_REUSEPORT spreads "
        "their connections over the workers. Route: a backlog published beforehand is "
        "(64 partition keys, so every partition holds a share) delivered by a webhook "
        "subscription (batch mode, default policy) whose consumer "
        "group has one member per worker to an aiohttp receiver in the benchmark's "
        "process; counted from the moment the group has all its members (Kafka's "
        "describe_groups) to the last event received.",
        "Every round, events/s: "
        + "; ".join(
            f"{name.replace('-', ', ')} worker(s): " + ", ".join(f"{r:,.0f}" for r in rates)
            for name, rates in sorted(results.items())
        )
        + ". The rounds spread more widely than the second worker moves them, even on an "
        "otherwise idle machine: the broker, the load generator or receiver and the "
        "workers contend for the same two cores.",
        "The machine has 2 cores, shared by the workers, the load generator or receiver, "
        "the Kafka broker and whatever else runs: the ratio shows what a second worker "
        "adds here, not what it adds on a host with a core to spare.",
        f"Load average at the end: {load_average():.2f}. Reproduce: export $(scripts/"
        "kafka.sh env); python benchmarks/run.py workers.",
    ]
    return section


def _profile(quick: bool) -> str:
    return "no profile for this scenario: profile the sidecar with bench_http.py --profile"


if __name__ == "__main__":
    raise SystemExit(cli(__doc__ or "", main, _profile))
