"""A real sidecar to attack: ``eventmesh run`` in a subprocess on free 127.0.0.1 ports.

Each test gets a fresh sidecar (so one attack's damage, or its memory high-water mark,
is not blamed on the next) started from a config tuned to make attacks cheap to mount:
few connections, few topics, a short header timeout, a small memory store. While an
attack runs, :meth:`Sidecar.watch` probes the admin ``/healthz`` from a thread every
100 ms and records the slowest answer; :meth:`Watch.check` then asserts that every probe
answered within 1 s and that the sidecar's peak RSS (``VmHWM``) stayed under the bound,
and :meth:`Sidecar.assert_serves` that a normal publish and pull still work.

Config keys that this version of eventmesh does not know yet are left out of the file
(and listed in ``Sidecar.dropped``), so the rest of the suite runs; the tests that need
them fail on the behaviour they check.
"""

from __future__ import annotations

import copy
import http.client
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import yaml

from eventmesh.config import load_config
from eventmesh.errors import ConfigError

HEALTHZ_BOUND = 1.0
"""Seconds: every /healthz probe during an attack must answer within this."""
PROBE_INTERVAL = 0.1
PROBE_TIMEOUT = 3.0
"""A probe that takes longer is cut off and recorded as this many seconds."""
RSS_BOUND_MB = 300
"""The sidecar's peak resident memory during any attack, in MiB."""
REQUEST_TIMEOUT = 10.0
"""Seconds any one request of the tests may take, so a frozen sidecar fails a test
instead of hanging the suite."""

MAX_CONNECTIONS = 200
HEADER_TIMEOUT = 3.0
BODY_TIMEOUT = 2.0
MAX_TOPICS = 200
MAX_SUBSCRIPTIONS = 300
MAX_EVENTS = 500
MAX_EVENT_SIZE = 2 * 1024 * 1024
MAX_LABEL_SETS = 50

BASE_CONFIG: dict[str, Any] = {
    "connectors": {"default": {"type": "memory", "max_events": MAX_EVENTS}},
    "server": {
        "http": {
            "port": 0,
            "max_event_size": MAX_EVENT_SIZE,
            "max_connections": MAX_CONNECTIONS,
            "header_timeout": f"{HEADER_TIMEOUT}s",
            "body_timeout": f"{BODY_TIMEOUT}s",
        },
        "grpc": {"port": 0},
        "admin": {"port": 0},
        "shutdown_timeout": "5s",
    },
    "logging": {"format": "json"},
    "metrics": {"max_label_sets": MAX_LABEL_SETS},
    "limits": {"max_topics": MAX_TOPICS, "max_subscriptions": MAX_SUBSCRIPTIONS},
}

_RUNNING = re.compile(r"running: http (http://\S+?), grpc (\S+?), admin (http://\S+?);")


def _known_keys(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``config`` without the keys this eventmesh does not know, and those keys."""
    config = copy.deepcopy(config)
    dropped: list[str] = []
    for _ in range(20):
        try:
            load_config(config)
        except ConfigError as exc:
            if exc.key is None or "unknown key" not in str(exc):
                raise
            *parents, last = exc.key.split(".")
            node: Any = config
            for part in parents:
                node = node[part]
            del node[last]
            dropped.append(exc.key)
        else:
            return config, dropped
    raise AssertionError(f"too many unknown keys: {dropped}")


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _status_kb(pid: int, field_name: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM), or 0 when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return 0
    found = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


@dataclass
class Answer:
    """An HTTP answer: the status and the JSON body (None when empty or not JSON)."""

    status: int
    body: Any
    raw: bytes = b""

    @property
    def size(self) -> int:
        """Bytes of the body as received."""
        return len(self.raw)

    def __repr__(self) -> str:
        text = f"Answer(status={self.status}, body={self.body!r})"
        return text if len(text) < 600 else text[:600] + "...)"

    @property
    def type(self) -> str | None:
        """The problem body's ``type`` (the eventmesh error class), if any."""
        return self.body.get("type") if isinstance(self.body, dict) else None


@dataclass
class Watch:
    """What the /healthz prober saw during one attack."""

    pid: int
    bound_mb: float
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    peak_kb: int = 0

    @property
    def worst(self) -> float:
        """The slowest probe, in seconds."""
        return max(self.latencies, default=0.0)

    def check(self) -> None:
        """Every probe answered 200 within 1 s, and peak RSS stayed under the bound."""
        print(  # shown with a failure, or with pytest -s
            f"/healthz: {len(self.latencies)} probes, worst {self.worst:.3f} s; "
            f"peak RSS {self.peak_kb / 1024:.0f} MiB"
        )
        assert self.latencies, "no /healthz probe was made"
        assert not self.failures, f"/healthz failed during the attack: {self.failures[:5]}"
        assert self.worst < HEALTHZ_BOUND, (
            f"/healthz took {self.worst:.2f} s at worst during the attack "
            f"({len(self.latencies)} probes)"
        )
        peak_mb = self.peak_kb / 1024
        assert peak_mb < self.bound_mb, (
            f"the sidecar's RSS peaked at {peak_mb:.0f} MiB, above {self.bound_mb:.0f} MiB"
        )


@dataclass
class Sidecar:
    """A running ``eventmesh run`` subprocess and clients for its three listeners."""

    proc: subprocess.Popen[bytes]
    http_url: str
    grpc_target: str
    admin_url: str
    stderr_path: Path
    dropped: list[str]
    session: aiohttp.ClientSession | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        """The sidecar's resident memory now."""
        return _status_kb(self.pid, "VmRSS")

    def log_size(self) -> int:
        """Bytes the sidecar has written to stderr (its log) so far."""
        return self.stderr_path.stat().st_size

    def log_since(self, offset: int) -> str:
        """What the sidecar logged after it had written ``offset`` bytes."""
        with self.stderr_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", errors="replace")

    @contextmanager
    def watch(self, bound_mb: float = RSS_BOUND_MB) -> Iterator[Watch]:
        """Probe admin /healthz every 100 ms from a thread while the block runs.

        A thread with a blocking client measures the sidecar, not this test's event loop,
        which may be busy mounting the attack."""
        seen = Watch(self.pid, bound_mb)
        stop = threading.Event()
        host, port = self.admin_url.removeprefix("http://").rsplit(":", 1)

        def probe() -> None:
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=PROBE_TIMEOUT)
                try:
                    conn.request("GET", "/healthz")
                    response = conn.getresponse()
                    response.read()
                    if response.status != 200:
                        seen.failures.append(f"status {response.status}")
                finally:
                    conn.close()
            except OSError as exc:
                seen.failures.append(repr(exc))
            seen.latencies.append(time.monotonic() - started)
            seen.peak_kb = max(seen.peak_kb, _status_kb(self.pid, "VmHWM"))

        def run() -> None:
            while not stop.is_set():
                probe()
                stop.wait(PROBE_INTERVAL)
            probe()  # one more after the attack, for work the sidecar does after answering

        thread = threading.Thread(target=run, name="healthz-prober", daemon=True)
        thread.start()
        try:
            yield seen
        except Exception as exc:
            stop.set()
            thread.join(PROBE_TIMEOUT * 2)
            raise AssertionError(
                f"the attack failed with {exc!r}; meanwhile /healthz took {seen.worst:.2f} s "
                f"at worst, failures: {seen.failures[:3]}"
            ) from exc
        finally:
            stop.set()
            thread.join(PROBE_TIMEOUT * 2)

    def _client(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                connector=aiohttp.TCPConnector(limit=50),
            )
        return self.session

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        admin: bool = False,
    ) -> Answer:
        """One request to the HTTP API (or the admin port); the answer decoded."""
        if json is not None:
            data = msgspec.json.encode(json)
            headers = {"Content-Type": "application/json", **(headers or {})}
        base = self.admin_url if admin else self.http_url
        async with self._client().request(
            method, base + path, data=data, headers=headers
        ) as response:
            raw = await response.read()
        try:
            body = msgspec.json.decode(raw) if raw else None
        except msgspec.DecodeError:
            body = None
        return Answer(response.status, body, raw)

    async def publish(self, topic: str, **attributes: Any) -> Answer:
        """Publish one event in the structured JSON format; attributes as given."""
        event = {
            "specversion": "1.0",
            "id": uuid.uuid4().hex,
            "source": "/adversarial",
            "type": "test.event",
            **attributes,
        }
        return await self.call(
            "POST",
            f"/topics/{topic}/events",
            data=msgspec.json.encode(event),
            headers={"Content-Type": "application/cloudevents+json"},
        )

    async def subscribe(self, topic: str, sub_id: str, **fields: Any) -> Answer:
        """Create a subscription (pull unless ``sink`` is given), from the earliest event."""
        return await self.call(
            "POST",
            "/subscriptions",
            json={"id": sub_id, "topic": topic, "start": "earliest", **fields},
        )

    async def pull(self, sub_id: str, want: int, *, wait: float = 5.0) -> list[dict[str, Any]]:
        """Pull and ack until ``want`` events came or ``wait`` seconds passed."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + wait
        while len(got) < want and (left := deadline - time.monotonic()) > 0:
            answer = await self.call(
                "GET", f"/subscriptions/{sub_id}/events?max=100&wait={min(left, 2.0):.2f}"
            )
            assert answer.status == 200, answer
            deliveries = answer.body["deliveries"]
            if deliveries:
                ids = [d["delivery_id"] for d in deliveries]
                acked = await self.call(
                    "POST", f"/subscriptions/{sub_id}/ack", json={"delivery_ids": ids}
                )
                assert acked.status == 200, acked
                got += [d["event"] for d in deliveries]
        return got

    async def assert_serves(self, topic: str | None = None) -> None:
        """After the attack: a normal publish is 202 and a pull subscription delivers it.

        The subscription has no dead-letter topic, so that it needs no new topic when
        the attack filled limits.max_topics (pass a ``topic`` that exists then)."""
        topic = topic or f"after-{uuid.uuid4().hex[:8]}"
        sub_id = f"after-{uuid.uuid4().hex[:8]}"
        created = await self.subscribe(topic, sub_id, delivery={"dead_letter": None})
        assert created.status == 201, created
        published = await self.publish(topic, subject="still serving")
        assert published.status == 202, published
        event_id = published.body["ids"][0]
        got = await self.pull(sub_id, 1, wait=10)
        assert event_id in [e["id"] for e in got], f"not delivered after the attack: {got}"
        assert self.proc.poll() is None, "the sidecar exited"

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def start_sidecar(tmp: Path, extra: Mapping[str, Any] | None = None) -> Sidecar:
    """``eventmesh run -c`` with :data:`BASE_CONFIG` (and ``extra`` merged in), on free
    ports, stderr to a file; returns once its 'running' log line names the addresses."""
    config, dropped = _known_keys(_merge(BASE_CONFIG, extra or {}))
    name = uuid.uuid4().hex[:8]
    path = tmp / f"sidecar-{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    stderr_path = tmp / f"sidecar-{name}.log"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventmesh.cli", "run", "-c", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _RUNNING.search(stderr_path.read_text(encoding="utf-8", errors="replace"))
        if found:
            return Sidecar(proc, found[1], found[2], found[3], stderr_path, dropped)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_sidecar(proc)
    raise AssertionError(f"the sidecar did not start: {stderr_path.read_text()[-2000:]}")


def stop_sidecar(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s: the sidecar never outlives its test."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
