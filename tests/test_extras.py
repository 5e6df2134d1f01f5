"""The core installs what an embedded mesh needs; each optional feature says which extra
it needs, in one line, when that extra is not installed.

Each check runs a child Python whose ``sitecustomize`` refuses the optional imports
(every top-level name in ``eventmesh._imports.EXTRAS`` unless told otherwise), as an
install without the extras would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from eventmesh._imports import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
CORE = {"msgspec", "anyio", "pyyaml"}

_BLOCKER = """\
import os, sys
_BLOCKED = frozenset(os.environ["EVENTMESH_TEST_BLOCKED"].split(","))
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
"""


def run_without(
    tmp_path: Path, args: list[str], *, blocked: set[str] | None = None, script: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python args`` (or ``script``) with ``blocked`` (default: every optional
    import) impossible to import; the child's output is returned."""
    (tmp_path / "sitecustomize.py").write_text(_BLOCKER, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["EVENTMESH_TEST_BLOCKED"] = ",".join(sorted(EXTRAS if blocked is None else blocked))
    env["EVENTMESH_DATA_DIR"] = str(tmp_path / "data")
    if script is not None:
        (tmp_path / "child.py").write_text(textwrap.dedent(script), encoding="utf-8")
        args = [str(tmp_path / "child.py"), *args]
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.core
def test_the_embedded_example_runs_on_the_core_alone(tmp_path: Path) -> None:
    """examples/embedded_pubsub.py bills, retries and audits with no extra installed."""
    out = lines(run_without(tmp_path, [str(ROOT / "examples" / "embedded_pubsub.py")]))
    assert out[0] == "billed orders: [1, 2, 3]"
    assert len([line for line in out if line.startswith("audit saw")]) == 3


_SDK = """
import json
import anyio
import eventmesh
from eventmesh import Event, MissingExtraError

def told(what, call):
    try:
        call()
    except MissingExtraError as exc:
        print(json.dumps({"what": what, "extra": exc.extra, "message": str(exc)}))
    else:
        print(json.dumps({"what": what, "extra": None}))

async def main():
    got = []
    async def handle(event):
        got.append(event.data)
    async with eventmesh.connect() as mesh:
        await mesh.publish("orders", [Event(type="t", source="/s", data={"n": n}) for n in (1, 2)])
        async with mesh.subscribe("orders", group="reader", start="earliest") as sub:
            async for delivery in sub:
                await delivery.ack()
                if delivery.event.data == {"n": 2}:
                    break
        async with mesh.subscribe("orders", group="h", start="earliest", handler=handle):
            with anyio.fail_after(10):
                while len(got) < 2:
                    await anyio.sleep(0.01)
        print(json.dumps({"what": "sdk", "got": got, "published": mesh.metrics.published}))
        told("metrics", mesh.metrics.render)
    traced = eventmesh.connect(config={"tracing": {"endpoint": "http://127.0.0.1:4318/v1/traces"}})
    try:
        async with traced:
            pass
    except MissingExtraError as exc:
        print(json.dumps({"what": "tracing", "extra": exc.extra, "message": str(exc)}))
    hooked = {"subscriptions": [{"name": "hook", "topic": "t", "sink": {"webhook": "http://127.0.0.1:1/"}}]}
    try:
        async with eventmesh.connect(config=hooked):
            pass
    except MissingExtraError as exc:
        print(json.dumps({"what": "webhook", "extra": exc.extra, "message": str(exc)}))

anyio.run(main)
with eventmesh.connect_blocking() as blocking:
    blocking.publish("orders", Event(type="t", source="/s"))
print(json.dumps({"what": "blocking"}))
told("http", lambda: eventmesh.connect("http://127.0.0.1:10105"))
told("grpc", lambda: eventmesh.connect("grpc://127.0.0.1:10205"))
told("cloudevents", Event(type="t", source="/s").to_cloudevent)
"""


@pytest.mark.core
def test_the_sdk_works_embedded_and_names_the_extra_for_the_rest(tmp_path: Path) -> None:
    """Embedded publish, iterate, handler and the blocking facade work on the core; the
    remote clients, /metrics, tracing, webhooks and the SDK conversion each name their
    extra in a MissingExtraError."""
    told = {
        item["what"]: item
        for item in map(json.loads, lines(run_without(tmp_path, [], script=_SDK)))
    }
    assert sorted(told["sdk"]["got"], key=str) == [{"n": 1}, {"n": 2}]
    assert told["sdk"]["published"] == {"orders": 2}
    assert "blocking" in told
    expected = {
        "http": ("sidecar", "connect('http://127.0.0.1:10105') needs the 'sidecar' extra"),
        "grpc": ("sidecar", "connect('grpc://127.0.0.1:10205') needs the 'sidecar' extra"),
        "metrics": ("prometheus", "the /metrics page needs the 'prometheus' extra"),
        "tracing": ("otel", "tracing (the tracing: config) needs the 'otel' extra"),
        "webhook": ("sidecar", "a webhook sink or HTTP function needs the 'sidecar' extra"),
        "cloudevents": ("cloudevents", "Event.to_cloudevent needs the 'cloudevents' extra"),
    }
    for what, (extra, start) in expected.items():
        assert told[what]["extra"] == extra, told[what]
        message = told[what]["message"]
        assert message.startswith(start), message
        assert message.endswith(f"pip install 'eventmesh[{extra}]'"), message
        assert "\n" not in message


@pytest.mark.core
@pytest.mark.parametrize(
    ("command", "status", "said"),
    [
        (
            ["run"],
            2,
            "eventmesh: the sidecar needs the 'sidecar' extra (no module named ...): "
            "pip install 'eventmesh[sidecar]'",
        ),
        (
            ["publish", "orders", "--type", "t", "--source", "/s"],
            1,
            "eventmesh publish: connect('http://127.0.0.1:10105') needs the 'sidecar' extra "
            "(no module named ...): pip install 'eventmesh[sidecar]'",
        ),
        (
            ["subscribe", "orders", "--url", "grpc://127.0.0.1:10205"],
            1,
            "eventmesh subscribe: connect('grpc://127.0.0.1:10205') needs the 'sidecar' extra "
            "(no module named ...): pip install 'eventmesh[sidecar]'",
        ),
    ],
)
def test_the_cli_says_which_extra_to_install_in_one_line(
    tmp_path: Path, command: list[str], status: int, said: str
) -> None:
    """A command whose extra is missing prints one line naming it, and no traceback."""
    env_free = ["-c", "import sys; from eventmesh.cli import main; sys.exit(main(sys.argv[1:]))"]
    result = run_without(tmp_path, [*env_free, *command])
    assert result.returncode == status, result.stderr
    told = [re.sub(r"named '[\w.]+'", "named ...", line) for line in result.stderr.splitlines()]
    assert told == [said]


def test_a_sidecar_with_tracing_says_it_needs_otel_before_it_starts(tmp_path: Path) -> None:
    """eventmesh run with a tracing: section and no otel extra stops at once with one line."""
    (tmp_path / "mesh.yaml").write_text(
        'tracing: {endpoint: "http://127.0.0.1:4318/v1/traces"}\n', encoding="utf-8"
    )
    command = "import sys; from eventmesh.cli import main; sys.exit(main(sys.argv[1:]))"
    result = run_without(
        tmp_path, ["-c", command, "run", "-c", "mesh.yaml"], blocked={"opentelemetry"}
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "eventmesh: tracing (the tracing: config) needs the 'otel' extra (no module named "
        "'opentelemetry'): pip install 'eventmesh[otel]'"
    ]
    assert not (tmp_path / "data").exists()  # nothing was started


@pytest.mark.core
def test_check_config_and_version_need_no_extra(tmp_path: Path) -> None:
    """check-config and version work on the core alone."""
    (tmp_path / "mesh.yaml").write_text("connectors: {default: {type: memory}}\n")
    command = "import sys; from eventmesh.cli import main; sys.exit(main(sys.argv[1:]))"
    checked = run_without(tmp_path, ["-c", command, "check-config", "mesh.yaml"])
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("mesh.yaml: ok")
    assert run_without(tmp_path, ["-c", command, "version"]).stdout.startswith("eventmesh ")


_SIDECAR = """
import aiohttp, anyio, eventmesh
from eventmesh import Event
from eventmesh.server.sidecar import Sidecar

FREE = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}

async def main():
    config = {"server": FREE, "connectors": {"default": {"type": "memory"}}}
    async with Sidecar(config) as sidecar:
        for address in (sidecar.http_url, "grpc://" + sidecar.grpc_target):
            async with eventmesh.connect(address) as client:
                await client.publish("orders", Event(type="t", source="/s"))
        async with aiohttp.ClientSession() as http:
            async with http.get(sidecar.admin_url + "/metrics") as response:
                page = await response.text()
        print([line for line in page.splitlines() if line.startswith("eventmesh_events_published")])
        await sidecar.close()

anyio.run(main)
"""


def test_the_sidecar_needs_only_its_extra(tmp_path: Path) -> None:
    """With the sidecar extra but not otel, cli, cloudevents or testing, the sidecar serves
    HTTP, gRPC and /metrics."""
    blocked = {name for name, extra in EXTRAS.items() if extra not in ("sidecar", "prometheus")}
    out = lines(run_without(tmp_path, [], blocked=blocked, script=_SIDECAR))
    assert out == [
        """['eventmesh_events_published_total{connector="default",topic="orders"} 2.0']"""
    ]


def _listed(requirements: list[str]) -> set[str]:
    """Distribution names (normalised) a list of requirements names."""
    names = set()
    for requirement in requirements:
        name = requirement.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0]
        names.add(name.strip().lower().replace("_", "-"))
    return names


def test_pyproject_and_the_extras_table_agree() -> None:
    """The core is msgspec, anyio and PyYAML; every optional import's extra exists and lists
    a distribution that provides it; ``all`` holds every feature's extra and ``dev`` holds
    ``all``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert _listed(project["dependencies"]) == CORE
    extras: dict[str, list[str]] = project["optional-dependencies"]
    features = set(EXTRAS.values())  # the tools' extras (dev, bench) are not features
    assert features <= set(extras)
    [everything] = extras["all"]
    assert everything.startswith("eventmesh[")
    assert set(everything.removeprefix("eventmesh[").removesuffix("]").split(",")) == features
    assert "eventmesh[all]" in extras["dev"]
    providers = packages_distributions()
    for module, extra in EXTRAS.items():
        wanted = {name.lower().replace("_", "-") for name in providers.get(module, [])}
        assert wanted & _listed(extras[extra]), f"{module}: no distribution of it in [{extra}]"
