"""Connector credentials from environment variables and files, never in the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventmesh.config import load_config
from eventmesh.errors import ConfigError

pytest.importorskip("eventmesh_nats")


def nats(**options: object) -> dict[str, object]:
    return {"connectors": {"default": {"type": "nats", **options}}}


def test_a_secret_field_reads_its_variable_or_its_file(tmp_path: Path) -> None:
    """token: {env: NAME} and password: {file: PATH} become the values, read at load."""
    (tmp_path / "pw").write_text("from-a-file\n")
    config = load_config(nats(token={"env": "NATS_TOKEN"}), env={"NATS_TOKEN": "from-the-env"})
    assert config.connectors["default"].config.token == "from-the-env"
    config = load_config(nats(user="alice", password={"file": str(tmp_path / "pw")}))
    assert config.connectors["default"].config.password == "from-a-file"
    assert "from-a-file" not in repr(config)


def test_a_mapping_in_a_field_that_is_no_secret_is_left_alone() -> None:
    """Only secret fields are resolved: a topic called 'env' stays a topic."""
    config = load_config(nats(subjects={"env": "orders.env"}), env={"orders.env": "x"})
    assert config.connectors["default"].config.subjects == {"env": "orders.env"}


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ({"env": "UNSET_VARIABLE"}, "UNSET_VARIABLE is not set"),
        ({"file": "/nonexistent/secret"}, "cannot read"),
        ({"env": "EMPTY"}, "is empty"),
        ({"env": "A", "file": "b"}, r"\{env: VARIABLE\} or \{file: PATH\}"),
        ({"vault": "x"}, r"\{env: VARIABLE\} or \{file: PATH\}"),
    ],
)
def test_an_unresolvable_secret_names_its_key(value: dict[str, str], said: str) -> None:
    """A missing variable or file, or a wrong shape, is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=rf"connectors\.default\.token: .*{said}"):
        load_config(nats(token=value), env={"EMPTY": ""})
