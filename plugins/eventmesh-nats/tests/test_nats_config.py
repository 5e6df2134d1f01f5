"""NatsConfig shown whole keeps its credentials hidden."""

from __future__ import annotations

from eventmesh_nats import NatsConfig


def test_a_printed_config_shows_no_credential() -> None:
    """The token, the password and a password inside a server URL print as ***."""
    config = NatsConfig(
        servers=["nats://alice:url-secret@127.0.0.1:4222", "nats://127.0.0.1:4223"],
        token="token-secret",
    )
    shown = repr(config)
    assert "url-secret" not in shown
    assert "token-secret" not in shown
    assert "nats://alice:***@127.0.0.1:4222" in shown
    assert "nats://127.0.0.1:4223" in shown
    with_password = repr(NatsConfig(user="alice", password="pw-secret"))
    assert "pw-secret" not in with_password
    assert "user='alice'" in with_password
