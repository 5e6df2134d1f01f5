"""The first hour with the eventmesh command: help, version, handler imports and the
hints that a mistake gets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from eventmesh.connectors.registry import _not_found, load_connector
from eventmesh.errors import PluginNotFoundError

pytestmark = pytest.mark.core  # CI runs these on the core alone


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the eventmesh CLI in a subprocess, as a user does."""
    return subprocess.run(
        [sys.executable, "-m", "eventmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_a_misspelled_type_suggests_the_installed_name_and_no_made_up_package() -> None:
    """'kafak' suggests the installed 'kafka', never 'pip install eventmesh-kafak'."""
    with pytest.raises(PluginNotFoundError) as caught:
        load_connector("kafak")
    assert "Did you mean 'kafka'?" in str(caught.value)
    assert "eventmesh-kafak" not in str(caught.value)


def test_an_unknown_type_names_only_packages_that_exist() -> None:
    """A type near no connector lists this project's real packages, not eventmesh-<type>."""
    with pytest.raises(PluginNotFoundError) as caught:
        load_connector("rabbit")
    text = str(caught.value)
    assert "eventmesh-rabbit" not in text
    assert "pip install eventmesh-kafka" in text
    assert "pip install eventmesh-nats" in text


def test_a_known_connector_that_is_not_installed_names_its_package() -> None:
    """Without the plugin, 'kafka' and its misspelling name the real package to install."""
    assert _not_found("kafka", ["memory"]).endswith("pip install eventmesh-kafka")
    assert "Did you mean 'kafka'? (pip install eventmesh-kafka)" in _not_found("kafak", ["memory"])


def test_bare_eventmesh_lists_every_command_on_one_line_and_exits_0() -> None:
    """No arguments prints each command with its help on the same line, status 0."""
    done = run()
    assert done.returncode == 0, done.stderr
    for command in ("run", "publish", "subscribe", "functions", "check-config", "version"):
        line = next(x for x in done.stdout.splitlines() if x.split()[:1] == [command])
        assert len(line.split()) > 1, f"{command!r} has no help on its line: {done.stdout}"


def test_dash_dash_version_prints_the_version() -> None:
    """'eventmesh --version' prints the same as 'eventmesh version' and exits 0."""
    import eventmesh

    done = run("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"eventmesh {eventmesh.__version__}")
