"""Apache EventMesh's own Java SDK (1.10.0-release) against ``eventmesh run``.

tests/interop/java-sdk/ is a small Java program on ``org.apache.eventmesh:eventmesh-sdk-java``
(InteropMain: one JVM per role, one fact per stdout line). It is built with Maven in the
``java_sdk`` fixture, its local repository in the repository's ignored ``.cache/m2``: with
the network the first time, offline after. A build that fails skips these tests with
the reason, or fails them under ``CI=true``. The sidecar is a real ``eventmesh run``
subprocess on ports the OS picks (read back from its start-up line); every process runs
under ``timeout`` and is stopped when its test ends.

The fixtures here are this file's own (the rest of tests/interop shares conftest.py).
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "tests" / "interop" / "java-sdk"
M2 = REPO / ".cache" / "m2"
TARGET = REPO / ".cache" / "interop" / "java-sdk"  # the pom's build directory
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
BUILD_TIMEOUT = 900  # the first build downloads the SDK and its dependencies
PROCESS_TIMEOUT = 240  # no process a test starts outlives this
WAIT = 60.0  # seconds to wait for one line that should come at once
MAIN = "org.eventmesh.interop.InteropMain"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _java_env() -> dict[str, str]:
    env = dict(os.environ)
    if Path(JAVA_HOME).is_dir():
        env["JAVA_HOME"] = JAVA_HOME
        env["PATH"] = f"{JAVA_HOME}/bin:{env.get('PATH', '')}"
    env["docker_host_ip"] = "127.0.0.1"  # the SDK's own IP lookup, made predictable
    return env


def _mvn(*goals: str, offline: bool) -> subprocess.CompletedProcess[str]:
    command = [
        "timeout",
        str(BUILD_TIMEOUT),
        "mvn",
        "-B",
        "-q",
        *(["-o"] if offline else []),
        "-f",
        str(PROJECT / "pom.xml"),
        f"-Dmaven.repo.local={M2}",
        *goals,
        "dependency:build-classpath",
        f"-Dmdep.outputFile={TARGET / 'cp.txt'}",
    ]
    return subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=PROJECT, env=_java_env()
    )


@pytest.fixture(scope="session")
def java_sdk() -> list[str]:
    """The command that runs InteropMain, built (and cached) here."""
    if shutil.which("mvn") is None or shutil.which("java") is None:
        _unavailable("the Java SDK interop tests need Java 17 and mvn on PATH")
    done = _mvn("package", offline=True)
    if done.returncode != 0:  # not cached yet: fetch with the network once
        done = _mvn("dependency:go-offline", "package", offline=False)
    classpath = TARGET / "cp.txt"
    if done.returncode != 0 or not classpath.exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        _unavailable(f"building tests/interop/java-sdk with Maven failed:\n{tail}")
    cp = f"{TARGET / 'classes'}:{classpath.read_text().strip()}"
    return ["java", "-cp", cp, MAIN]


class Proc:
    """A process started by a test, its stdout (and stderr) read line by line."""

    def __init__(
        self, command: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path = REPO
    ) -> None:
        self.command = list(command)
        self.popen = subprocess.Popen(
            ["timeout", str(PROCESS_TIMEOUT), *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """The first line (from now) matching ``pattern``; AssertionError when none comes."""
        deadline = time.monotonic() + timeout
        wanted = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.001))
            except queue.Empty:
                line = ""
            if line is None or left <= 0:
                tail = "\n".join(self.seen[-30:])
                raise AssertionError(
                    f"no line matching {pattern!r} from {self.command[-4:]}:\n{tail}"
                )
            self.seen.append(line)
            if match := wanted.match(line):
                return match

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text)
        self.popen.stdin.flush()

    def finish(self, timeout: float = WAIT) -> list[str]:
        """Wait for the end; every line it printed."""
        self.popen.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        while (line := self.lines.get_nowait() if not self.lines.empty() else None) is not None:
            self.seen.append(line)
        return self.seen

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=10)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:  # stdin of a process that ended with data unread
                    pass


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts, all stopped when it ends."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


class Mesh:
    """``eventmesh run`` on ports the OS chose."""

    def __init__(self, proc: Proc, http: int, grpc: int) -> None:
        self.proc = proc
        self.http = http
        self.grpc = grpc


def _start(procs: list[Proc], folder: Path, extra: str = "") -> Mesh:
    config = folder / "mesh.yaml"
    config.write_text(
        "connectors: {default: {type: memory}}\n"
        "server:\n"
        "  http: {host: 127.0.0.1, port: 0}\n"
        "  grpc: {host: 127.0.0.1, port: 0}\n"
        "  admin: {host: 127.0.0.1, port: 0}\n" + extra
    )
    proc = Proc([sys.executable, "-m", "eventmesh.cli", "run", "-c", str(config)], cwd=folder)
    procs.append(proc)
    line = proc.expect(
        r".*sidecar listening: http http://127\.0\.0\.1:(\d+), grpc 127\.0\.0\.1:(\d+)"
    )
    return Mesh(proc, http=int(line.group(1)), grpc=int(line.group(2)))


@pytest.fixture
def eventmesh_run(procs: list[Proc], tmp_path: Path) -> Mesh:
    """The sidecar as users run it, on 127.0.0.1 with the in-memory connector."""
    return _start(procs, tmp_path)


TOKEN = "billing-secret-token"


@pytest.fixture
def guarded_run(procs: list[Proc], tmp_path: Path) -> Mesh:
    """The sidecar with a static token for principal billing and an ACL."""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    return _start(
        procs,
        tmp_path,
        "auth:\n"
        f"  tokens: [{{principal: billing, sha256: '{digest}'}}]\n"
        "acl:\n"
        "  - {principal: billing, allow: [publish, subscribe], topics: ['interop.*'],"
        " groups: [billing]}\n",
    )


def _java(
    java_sdk: list[str], procs: list[Proc], *args: object, user: str = "", password: str = ""
) -> Proc:
    """InteropMain with ``args``; ``user`` and ``password`` for its clients when given."""
    props = [f"-Dinterop.user={user}", f"-Dinterop.password={password}"] if user else []
    proc = Proc([java_sdk[0], *props, *java_sdk[1:], *map(str, args)], env=_java_env())
    procs.append(proc)
    return proc


def _run(
    java_sdk: list[str], procs: list[Proc], *args: object, user: str = "", password: str = ""
) -> list[str]:
    """Run a producer to its end; its lines. It must report no failed check."""
    proc = _java(java_sdk, procs, *args, user=user, password=password)
    proc.expect(r"\d+ passed, 0 failed$", timeout=WAIT * 2)
    proc.finish()
    assert proc.popen.returncode == 0, proc.seen[-30:]
    return proc.seen


def _sent(lines: list[str]) -> dict[str, tuple[str, str, str]]:
    """id -> (subject, type, data hash) of each SENT line."""
    sent = {}
    for line in lines:
        if line.startswith("SENT "):
            _, event_id, subject, kind, digest = line.split(" ")
            sent[event_id] = (subject, kind, digest)
    return sent


def _topic() -> str:
    return f"interop.{uuid.uuid4().hex[:8]}"


def _received_on_stream(consumer: Proc, n: int) -> list[list[str]]:
    got = [consumer.expect(r"GOT .*").group(0).split(" ")[1:] for _ in range(n)]
    assert consumer.expect("HEARTBEAT (.*)").group(1) == "0"
    assert consumer.expect("HEARTBEAT-UNKNOWN (.*)").group(1) == "30"
    assert consumer.expect("UNSUBSCRIBED (.*)").group(1) == "0"
    return got


def _assert_stream(got: list[list[str]], sent: dict[str, tuple[str, str, str]]) -> None:
    assert len(got) == len(sent)
    seqnums = set()
    for event_id, subject, kind, digest, seqnum, uniqueid, passwd, _trace in got:
        assert (subject, kind, digest) == sent[event_id], event_id
        assert uniqueid == event_id
        assert seqnum != "null"
        seqnums.add(seqnum)
        assert passwd == "null"  # the producer's password is never forwarded
    assert {g[0] for g in got} == set(sent)
    assert len(seqnums) == len(got)


def _end_stream(consumer: Proc, n: int) -> None:
    consumer.send("done\n")
    assert consumer.expect("TOTAL (.*)").group(1) == str(n)  # nothing after unsubscribe
    assert consumer.expect("NULLS (.*)").group(1) == "0"
    consumer.expect(r"\d+ passed, 0 failed$")
    assert not [line for line in consumer.seen if "Received Server side error" in line]


def test_grpc_publish_and_stream_subscribe(
    java_sdk: list[str], eventmesh_run: Mesh, procs: list[Proc]
) -> None:
    """The SDK's gRPC publish and batch publish answer "0" with a time, and its stream
    consumer gets each event once with id, subject, type, data, seqnum and uniqueid; a
    heartbeat answers "0" (30 for a topic it does not hold) and after unsubscribe
    nothing more arrives."""
    mesh, topic = eventmesh_run, _topic()
    consumer = _java(java_sdk, procs, "grpc-sub", 5, topic, mesh.grpc, "stream-group")
    consumer.expect("READY$")
    lines = _run(java_sdk, procs, "grpc-pub", 3, topic, mesh.grpc)
    responses = [line.split(" ") for line in lines if line.startswith("RESP ")]
    assert len(responses) == 4  # 3 publish, 1 batchPublish of 2
    assert all(code == "0" and when != "null" for _, code, when in responses)
    sent = _sent(lines)
    _assert_stream(_received_on_stream(consumer, 5), sent)
    _run(java_sdk, procs, "grpc-pub", 1, topic, mesh.grpc)  # after unsubscribe
    _end_stream(consumer, 5)


def test_http_publish_and_webhook_subscribe(
    java_sdk: list[str], eventmesh_run: Mesh, procs: list[Proc]
) -> None:
    """The SDK's HTTP producer publishes CloudEvents and an EventMeshMessage; its HTTP
    consumer's webhook gets each as Apache EventMesh's push (code 105, the form fields,
    content a CloudEvent with the same id), a retCode 2 is retried once, and after
    unsubscribe nothing more is pushed."""
    mesh, topic = eventmesh_run, _topic()
    consumer = _java(java_sdk, procs, "http-sub", 4, topic, mesh.http, "hook-group", "retry")
    consumer.expect("READY$")
    sent = _sent(_run(java_sdk, procs, "http-pub", 3, topic, mesh.http))
    assert len(sent) == 4
    consumer.expect("UNSUBSCRIBED$")
    _run(java_sdk, procs, "http-pub", 1, topic, mesh.http)  # after unsubscribe
    consumer.send("done\n")
    assert consumer.expect("TOTAL (.*)").group(1) == "4 5"  # 4 events, one pushed twice
    consumer.expect(r"\d+ passed, 0 failed$")
    pushes = [line.split(" ") for line in consumer.seen if line.startswith("PUSH ")]
    assert len(pushes) == 5
    for push in pushes:
        _, code, form_topic, event_id, subject, kind, digest, uniqueid, passwd, fields = push[:10]
        assert (code, form_topic, uniqueid, passwd, fields) == (
            "105",
            topic,
            event_id,
            "null",
            "true",
        )
        assert (subject, kind, digest) == sent[event_id]
    retried = [push[3] for push in pushes if push[-1] == "RETRY"]
    assert len(retried) == 1
    assert [push[3] for push in pushes].count(retried[0]) == 2
    assert {push[3] for push in pushes} == set(sent)
    assert "eventmeshmessage" in {kind for _, kind, _ in sent.values()}


def test_cross_transport(java_sdk: list[str], eventmesh_run: Mesh, procs: list[Proc]) -> None:
    """Published over HTTP, received on a gRPC stream; published over gRPC, pushed to a
    webhook: each rendered for the consumer's transport (upstream drops both)."""
    mesh = eventmesh_run
    to_stream, to_hook = _topic(), _topic()
    stream = _java(java_sdk, procs, "grpc-sub", 4, to_stream, mesh.grpc, "x-stream")
    hook = _java(java_sdk, procs, "http-sub", 5, to_hook, mesh.http, "x-hook")
    stream.expect("READY$")
    hook.expect("READY$")
    over_http = _sent(_run(java_sdk, procs, "http-pub", 3, to_stream, mesh.http))
    over_grpc = _sent(_run(java_sdk, procs, "grpc-pub", 3, to_hook, mesh.grpc))
    _assert_stream(_received_on_stream(stream, 4), over_http)
    _end_stream(stream, 4)
    hook.expect("UNSUBSCRIBED$")
    hook.send("done\n")
    assert hook.expect("TOTAL (.*)").group(1) == "5 5"
    pushes = [line.split(" ") for line in hook.seen if line.startswith("PUSH ")]
    assert {push[3]: tuple(push[4:7]) for push in pushes} == over_grpc
    assert all(push[1] == "105" and push[2] == to_hook for push in pushes)


def test_request_reply(java_sdk: list[str], eventmesh_run: Mesh, procs: list[Proc]) -> None:
    """The SDK's gRPC requestReply gets the reply that the SDK's own stream consumer returns
    from its handler, with the request's correlation id. (The SDK's HTTP request() cannot
    read any answer in 1.10: its ReplyMessage has no constructor Jackson can use, so code
    101 is tested without Java, in tests/server/test_apache.py.)"""
    mesh, topic = eventmesh_run, _topic()
    responder = _java(java_sdk, procs, "grpc-sub", 4, topic, mesh.grpc, "responders", "reply")
    responder.expect("READY$")
    lines = _run(java_sdk, procs, "grpc-rr", 2, topic, mesh.grpc)
    replies = [line.split(" ") for line in lines if line.startswith("REPLY ")]
    assert len(replies) == 2
    for _, request_id, reply_id, kind, data, correlation, code in replies:
        assert (reply_id, kind, code) == (f"reply-{request_id}", "org.eventmesh.interop.reply", "0")
        assert (data, correlation) == (f'{{"answer":"{request_id}"}}', request_id)


def test_username_and_password_authenticate(
    java_sdk: list[str], guarded_run: Mesh, procs: list[Proc]
) -> None:
    """With auth on, the SDK's userName and password (the principal's token) let it
    publish and subscribe; a wrong password is refused (status 20 over gRPC, an exception
    over HTTP) and nothing it sent is stored."""
    mesh, topic = guarded_run, _topic()
    billing = {"user": "billing", "password": TOKEN}
    consumer = _java(java_sdk, procs, "grpc-sub", 5, topic, mesh.grpc, "billing", **billing)
    consumer.expect("READY$")
    for mode, port in (("grpc-pub", mesh.grpc), ("http-pub", mesh.http)):
        refused = _java(java_sdk, procs, mode, 1, topic, port, user="billing", password="guess")
        refused.expect(r"\d+ passed, [1-9]\d* failed$", timeout=WAIT * 2)
        refused.finish()
        if mode == "grpc-pub":
            codes = {line.split(" ")[1] for line in refused.seen if line.startswith("RESP ")}
            assert codes == {"20"}
        else:
            assert any("EventMeshException" in line for line in refused.seen)
    sent = _sent(_run(java_sdk, procs, "grpc-pub", 1, topic, mesh.grpc, **billing))
    sent |= _sent(_run(java_sdk, procs, "http-pub", 1, topic, mesh.http, **billing))
    assert len(sent) == 5  # 1 + a batch of 2 over gRPC, a CloudEvent and a message over HTTP
    _assert_stream(_received_on_stream(consumer, 5), sent)
    _end_stream(consumer, 5)
