"""eventmesh run --workers: refused, before anything starts, where workers cannot share."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventmesh import cli


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = cli.main(["run", "--data-dir", str(tmp_path / "data"), *args])
    return status, capsys.readouterr().err


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mesh.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


PORTS = ("--set", "server.http.port=18105", "--set", "server.grpc.port=18205")


def test_the_default_local_store_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default connector (type local, one process's SQLite store) cannot be shared:
    exit 2 with a message naming the connector and saying what to use; no data directory
    is made, so nothing started."""
    status, err = _run(tmp_path, capsys, "--workers", "2")
    assert status == 2
    assert "connector 'default'" in err
    assert "type local" in err
    assert "kafka, nats" in err
    assert not (tmp_path / "data").exists()


def test_a_memory_connector_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A memory connector keeps events in one process: refused, naming it."""
    config = _config(tmp_path, "connectors:\n  default: {type: memory}\n")
    status, err = _run(tmp_path, capsys, "-c", config, "--workers", "3")
    assert status == 2
    assert "--workers 3 cannot share connector 'default': type memory" in err


def test_zero_workers_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--workers 0 is out of range: exit 2 with the range."""
    config = _config(tmp_path, "connectors:\n  default: {type: memory}\n")
    status, err = _run(tmp_path, capsys, "-c", config, "--workers", "0")
    assert status == 2
    assert "--workers must be between 1 and 256, got 0" in err


def test_port_zero_is_refused_with_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Workers share fixed ports: a listener on port 0 would differ per worker."""
    kafka = "connectors:\n  default: {type: kafka, bootstrap_servers: '127.0.0.1:1'}\n"
    pytest.importorskip("eventmesh_kafka")
    config = _config(tmp_path, kafka)
    status, err = _run(
        tmp_path, capsys, "-c", config, "--workers", "2", *PORTS, "--set", "server.admin.port=0"
    )
    assert status == 2
    assert "server.admin.port is 0" in err
