"""Soak: `eventmesh run` (in-memory connector) at a steady rate for minutes, with a
webhook and a pull consumer; the sidecar's RSS sampled every 10 s, nothing lost.

The sidecar runs as a subprocess with the default configuration but for its ports. This
process is the load and the consumers: a publisher sends ``--rate`` events/s in batches
over HTTP, an aiohttp receiver on 127.0.0.1 takes the webhook subscription's POSTs, and
a pull subscription is long-polled and acked. At the end every id answered with 202 must
have reached both consumers. The figures that matter are the RSS growth after warm-up
(issue 13: at most 10 % over a 10-minute run after the first minute) and delivered /
published (1.00 for both consumers).

    python benchmarks/bench_soak.py --duration 600        # the recorded run (10 minutes)
    python benchmarks/bench_soak.py --duration 60 --no-write   # a trial
    python benchmarks/run.py soak                          # the same, 600 s (--quick: 60 s)
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
import uvloop
import yaml
from aiohttp import web
from harness import Row, Section

TITLE = "Soak (sidecar, in-memory connector, webhook and pull consumers)"
DURATION: Final = 600.0
QUICK_DURATION: Final = 60.0
RATE: Final = 1_000
BATCH: Final = 100
SAMPLE_EVERY: Final = 10.0
WARM_UP: Final = 60.0
DRAIN_TIMEOUT: Final = 60.0
TOPIC: Final = "soak"
PAYLOAD: Final = {"order": 0, "customer": "c-000042", "items": ["sku-1", "sku-2"], "total": 99.5}
_RUNNING = re.compile(r"running: http (http://\S+?), grpc (\S+?), admin (http://\S+?);")
_ids = msgspec.json.Decoder(list[dict[str, Any]])


@dataclass
class Soak:
    """What one soak run saw."""

    published: set[int] = field(default_factory=set)
    publish_errors: int = 0
    webhook: set[int] = field(default_factory=set)
    webhook_copies: int = 0
    pulled: set[int] = field(default_factory=set)
    pulled_copies: int = 0
    rss: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the start of publishing, MiB)."""
    backlog: list[tuple[int, int]] = field(default_factory=list)
    """At each RSS sample: events stored but not yet received by (webhook, pull)."""
    publishing: float = 0.0
    """Seconds the publisher ran."""
    caught_up: dict[str, float | None] = field(default_factory=dict)
    """Seconds after publishing stopped until each consumer had every id (None: never)."""
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each subscription's delivery stats, as the sidecar reports them at the end."""
    log: list[str] = field(default_factory=list)
    """The sidecar's warning and error lines."""


def _rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else 0.0


def _start_sidecar(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`eventmesh run` with the defaults but free ports; (process, http url, log path)."""
    config = {"server": {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}}
    path = workdir / "soak.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = workdir / "sidecar.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventmesh.cli", "run", "-c", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        found = _RUNNING.search(log.read_text(encoding="utf-8", errors="replace"))
        if found:
            return proc, found[1], log
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the sidecar did not start: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _receiver(soak: Soak) -> tuple[web.AppRunner, str]:
    """The webhook consumer: an aiohttp app on 127.0.0.1 that records ids and answers 204."""

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if request.content_type == "application/cloudevents-batch+json":
            ids = [int(event["id"]) for event in _ids.decode(body)]
        else:
            ids = [int(request.headers["ce-id"])]
        soak.webhook_copies += len(ids)
        soak.webhook.update(ids)
        return web.Response(status=204)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/events", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/events"


async def _publisher(
    session: aiohttp.ClientSession, url: str, soak: Soak, rate: int, batch: int, until: float
) -> None:
    """``rate`` events/s in batches of up to ``batch``, on schedule (a late batch is
    made up by the next ones, never by bursting beyond one batch per request)."""
    encoder = msgspec.json.Encoder()
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic()) < until:
        due = int((now - start) * rate) - sent
        if due <= 0:
            await asyncio.sleep(min(batch / rate, until - now) / 2)
            continue
        count = min(due, batch)
        ids = range(sent, sent + count)
        events = [
            {
                "specversion": "1.0",
                "id": str(n),
                "source": "/bench/soak",
                "type": "bench.soak",
                "datacontenttype": "application/json",
                "data": {**PAYLOAD, "order": n},
            }
            for n in ids
        ]
        sent += count
        try:
            async with session.post(
                url,
                data=encoder.encode(events),
                headers={"Content-Type": "application/cloudevents-batch+json"},
            ) as response:
                await response.read()
                if response.status == 202:
                    soak.published.update(ids)
                else:
                    soak.publish_errors += count
        except aiohttp.ClientError:
            soak.publish_errors += count


async def _puller(
    session: aiohttp.ClientSession, base: str, soak: Soak, stop: asyncio.Event
) -> None:
    """Long-poll the pull subscription and ack what came, until ``stop``."""
    while not stop.is_set():
        async with session.get(f"{base}/subscriptions/soak-pull/events?max=1000&wait=1") as got:
            body = await got.json()
        deliveries = body["deliveries"]
        if not deliveries:
            continue
        ids = [int(d["event"]["id"]) for d in deliveries]
        soak.pulled_copies += len(ids)
        soak.pulled.update(ids)
        async with session.post(
            f"{base}/subscriptions/soak-pull/ack",
            json={"delivery_ids": [d["delivery_id"] for d in deliveries]},
        ) as acked:
            await acked.read()


async def _sampler(pid: int, soak: Soak, start: float, stop: asyncio.Event) -> None:
    while True:
        soak.rss.append((time.monotonic() - start, _rss_mib(pid)))
        stored = len(soak.published)
        soak.backlog.append((stored - len(soak.webhook), stored - len(soak.pulled)))
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
            return
        except TimeoutError:
            pass


async def soak(duration: float, rate: int, batch: int, mode: str) -> Soak:
    """Run the sidecar and the load for ``duration`` seconds; what was seen."""
    seen = Soak()
    with tempfile.TemporaryDirectory() as workdir:
        proc, base, _log = _start_sidecar(Path(workdir))
        runner, sink = await _receiver(seen)
        stop = asyncio.Event()
        try:
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for fields in (
                    {"id": "soak-pull"},
                    {"id": "soak-webhook", "sink": sink, "protocolsettings": {"mode": mode}},
                ):
                    async with session.post(
                        f"{base}/subscriptions", json={"topic": TOPIC, **fields}
                    ) as created:
                        assert created.status == 201, await created.text()
                start = time.monotonic()
                tasks = [
                    asyncio.create_task(_sampler(proc.pid, seen, start, stop)),
                    asyncio.create_task(_puller(session, base, seen, stop)),
                ]
                await _publisher(
                    session, f"{base}/topics/{TOPIC}/events", seen, rate, batch, start + duration
                )
                ended = time.monotonic()
                seen.publishing = ended - start
                seen.rss.append((seen.publishing, _rss_mib(proc.pid)))
                consumers = {"webhook": seen.webhook, "pull": seen.pulled}
                seen.caught_up = dict.fromkeys(consumers)
                # Compared every 100 ms: a check per delivery would cost the consumers more.
                while time.monotonic() < ended + DRAIN_TIMEOUT:
                    for name, got in consumers.items():
                        if seen.caught_up[name] is None and seen.published <= got:
                            seen.caught_up[name] = time.monotonic() - ended
                    if None not in seen.caught_up.values():
                        break
                    await asyncio.sleep(0.1)
                seen.rss.append((time.monotonic() - start, _rss_mib(proc.pid)))
                stop.set()
                await asyncio.gather(*tasks)
                for name in ("soak-webhook", "soak-pull"):
                    async with session.get(f"{base}/subscriptions/{name}") as got:
                        seen.stats[name] = (await got.json()).get("stats", {})
            log_lines = _log.read_text(encoding="utf-8", errors="replace").splitlines()
            seen.log = [line for line in log_lines if "WARNING" in line or "ERROR" in line]
        finally:
            stop.set()
            await runner.cleanup()
            _stop(proc)
    return seen


def _growth(seen: Soak, warm_up: float) -> tuple[float, float, float]:
    """RSS after warm-up and when publishing stopped (MiB), and the growth in percent."""
    during = [mib for at, mib in seen.rss if warm_up <= at <= seen.publishing]
    first, last = during[0], during[-1]
    return first, last, (last - first) / first * 100


def _caught_up(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def measure(duration: float, rate: int = RATE, batch: int = BATCH, mode: str = "batch") -> Section:
    """One soak run as the rows and notes of docs/benchmarks.md."""
    seen = uvloop.run(soak(duration, rate, batch, mode))
    warm_up = min(WARM_UP, duration / 2)
    first, last, growth = _growth(seen, warm_up)
    published = len(seen.published) or 1
    lost_webhook = len(seen.published - seen.webhook)
    lost_pull = len(seen.published - seen.pulled)
    rows = [
        Row(
            "published (events/s)",
            len(seen.published) / duration,
            "events/s",
            baseline=rate,
            baseline_name="target rate",
        ),
        Row(
            f"RSS growth after the first {warm_up:.0f} s",
            growth,
            "%",
            higher_is_better=False,
            goal="at most 10 % over 10 minutes",
        ),
        Row(
            "RSS when publishing stopped (MiB)",
            last,
            "MiB",
            baseline=first,
            baseline_name=f"after {warm_up:.0f} s",
            higher_is_better=False,
        ),
        Row(
            "webhook: delivered / published",
            len(seen.published & seen.webhook) / published,
            "x",
            goal="1.00, nothing lost",
        ),
        Row(
            "pull: delivered / published",
            len(seen.published & seen.pulled) / published,
            "x",
            goal="1.00, nothing lost",
        ),
    ]
    curve = ", ".join(f"{mib:.0f}" for _, mib in seen.rss)
    notes = [
        f"{duration:.0f} s at {rate:,} events/s in HTTP batches of {batch}, "
        f"{len(seen.published):,} events stored (202), {seen.publish_errors:,} refused; "
        f"the sidecar is `eventmesh run` with the default config (memory connector) on "
        f"free ports, in its own process",
        f"RSS of the sidecar every {SAMPLE_EVERY:.0f} s, MiB: {curve} (the last two: when "
        "publishing stopped, and once both consumers had caught up)",
        "backlog (stored, not yet received) at each sample, webhook/pull: "
        + ", ".join(f"{w}/{p}" for w, p in seen.backlog)
        + "; a backlog that grows means the consumers do not keep up, and RSS grows with it",
        f"lost: webhook {lost_webhook:,}, pull {lost_pull:,}; copies received (at least "
        f"once): webhook {seen.webhook_copies:,}, pull {seen.pulled_copies:,}; caught up "
        f"after publishing stopped: webhook {_caught_up(seen.caught_up['webhook'])}, "
        f"pull {_caught_up(seen.caught_up['pull'])}",
        f"webhook mode `{mode}`; the pull consumer long-polls up to 1,000 and acks each "
        "answer; both consumers and the publisher share this one process",
        "the sidecar's own stats: "
        + "; ".join(
            f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in stats.items() if isinstance(v, int))
            for name, stats in seen.stats.items()
        ),
        f"the sidecar logged {len(seen.log)} warnings or errors"
        + (f", the first: {seen.log[0][:300]}" if seen.log else ""),
    ]
    return Section(TITLE, rows, notes)


def main(quick: bool) -> Section:
    """For benchmarks/run.py: the 10-minute run (60 s with --quick)."""
    return measure(QUICK_DURATION if quick else DURATION)


def _cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=DURATION, help="seconds of load")
    parser.add_argument("--rate", type=int, default=RATE, help="events per second")
    parser.add_argument("--batch", type=int, default=BATCH, help="events per publish")
    parser.add_argument("--mode", choices=["binary", "structured", "batch"], default="batch")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    section = measure(args.duration, args.rate, args.batch, args.mode)
    for row in section.rows:
        print(f"{row.name}: {row.value:,.2f} {row.unit}")
    for note in section.notes:
        print(f"- {note}")
    if not args.no_write:
        import run  # the results file and docs/benchmarks.md, as `run.py soak` writes them

        run.save("soak", section, quick=args.duration < DURATION)
        out = Path(run.__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        out.write_text(run.render(run.load_all()), encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
