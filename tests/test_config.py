"""Configuration: typed loading, errors that name the key and line, precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eventmesh import ConfigError, DeliveryPolicy, load_config
from eventmesh.connectors.memory import MemoryConfig

pytestmark = pytest.mark.core  # CI runs these on the core alone

GOOD = """\
connectors:
  default: {type: memory, partitions: 4, max_events: 1000}
  spare: {type: memory}
topics:
  audit: {connector: spare}
subscriptions:
  - name: billing
    topic: orders
    sink: {handler: "json:dumps"}
    delivery: {max_attempts: 3, backoff: {initial: 250ms, max: 30s}, ttl: 5m, concurrency: 4}
logging: {level: debug}
"""


def write(tmp_path: Path, text: str) -> Path:
    """Write a config file and return its path."""
    path = tmp_path / "mesh.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_good_file_loads_into_typed_structs(tmp_path: Path) -> None:
    """Every section becomes a typed struct; durations become seconds."""
    config = load_config(write(tmp_path, GOOD))
    assert config.connectors["default"].config == MemoryConfig(partitions=4, max_events=1000)
    assert config.connector_for("audit") == "spare"
    assert config.connector_for("orders") == "default"
    policy = config.subscriptions[0].delivery
    assert isinstance(policy, DeliveryPolicy)
    assert (policy.backoff.initial, policy.backoff.max, policy.ttl) == (0.25, 30.0, 300.0)
    assert config.subscriptions[0].group_name == "billing"
    assert config.logging.level == "debug"


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        (
            GOOD.replace("concurrency: 4", "concurency: 4"),
            "subscriptions[0].delivery.concurency",
            10,
            "unknown key",
        ),
        (
            GOOD.replace("max_attempts: 3", "max_attempts: three"),
            "subscriptions[0].delivery.max_attempts",
            10,
            "Expected `int`",
        ),
        (
            GOOD.replace("max_attempts: 3", "max_attempts: 0"),
            "subscriptions[0].delivery",
            10,
            "max_attempts must be between 1 and 10,000",
        ),
        (
            GOOD.replace("initial: 250ms", "initial: soon"),
            "subscriptions[0].delivery.backoff.initial",
            10,
            "duration",
        ),
        (GOOD.replace("partitions: 4", "partitions: -1"), "connectors.default", 2, "at least 1"),
        (
            GOOD.replace("type: memory, partitions", "type: kafak, partitions"),
            "connectors.default.type",
            2,
            "no connector named 'kafak'",
        ),
        (
            GOOD.replace("{connector: spare}", "{connector: nowhere}"),
            "topics.audit.connector",
            5,
            "not defined",
        ),
        (
            GOOD.replace('sink: {handler: "json:dumps"}', "sink: {}"),
            "subscriptions[0].sink",
            9,
            "exactly one",
        ),
        (
            GOOD.replace('"json:dumps"', '"json.dumps"'),
            "subscriptions[0].sink.handler",
            9,
            "package.module:function",
        ),
        (
            GOOD + "functions: [{name: f, trigger: {topic: t}, handler: m.f}]\n",
            "functions[0].handler",
            12,
            "package.module:function",
        ),
        (
            GOOD + "functions: [{name: f, trigger: {topic: t}, url: http://x, burst: 0}]\n",
            "functions[0].burst",
            12,
            "at least 1",
        ),
        (
            GOOD
            + "functions: [{name: f, url: http://x,\n"
            + "  trigger: {topic: t, delivery: {dead_letter: '{topic}'}}}]\n",
            "functions[0].trigger.delivery.dead_letter",
            13,
            "names the topic the subscription reads",
        ),
        (GOOD + "surprise: 1\n", "surprise", 12, "unknown key"),
    ],
)
def test_errors_name_the_key_and_the_line(
    tmp_path: Path, text: str, key: str, line: int, words: str
) -> None:
    """A wrong key or value raises ConfigError with its dotted key and file line."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key
    assert info.value.line == line
    assert words in str(info.value)


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    """A YAML syntax error is a ConfigError with the line of the problem."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "connectors:\n  default: {type: memory\nx: 1\n"))
    assert info.value.line == 3


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """Pointing at a file that is not there says so."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_environment_overrides_the_file_and_overrides_win(tmp_path: Path) -> None:
    """EVENTMESH__ variables beat the file; explicit overrides beat both."""
    env = {
        "EVENTMESH__CONNECTORS__DEFAULT__PARTITIONS": "16",
        "EVENTMESH__SUBSCRIPTIONS__0__DELIVERY__CONCURRENCY": "2",
        "EVENTMESH__LOGGING__LEVEL": "warning",
        "UNRELATED": "1",
    }
    config = load_config(write(tmp_path, GOOD), env=env, overrides={"logging.level": "error"})
    assert config.connectors["default"].config.partitions == 16
    assert config.subscriptions[0].delivery.concurrency == 2
    assert config.logging.level == "error"


def test_a_bad_environment_value_names_its_key() -> None:
    """A wrong value from the environment is reported at the key it sets."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"EVENTMESH__SERVER__HTTP__PORT": "eighty"})
    assert info.value.key == "server.http.port"


def test_no_config_means_one_memory_connector() -> None:
    """With nothing given, the mesh has a single in-memory connector named default."""
    config = load_config(None)
    assert list(config.connectors) == ["default"]
    assert config.connectors["default"].type == "memory"


def test_a_webhook_that_is_not_an_http_url_is_refused_with_its_key(tmp_path: Path) -> None:
    """A webhook sink must be an http(s) URL; anything else names its key and line."""
    text = GOOD.replace('{handler: "json:dumps"}', '{webhook: "ftp://127.0.0.1:8080/"}')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == "subscriptions[0].sink.webhook"
    assert info.value.line == 9


def test_listeners_keep_their_default_ports_and_topics_follow_the_default_connector() -> None:
    """Setting only a host keeps the port; a topic without a connector uses the default."""
    config = load_config(
        {
            "server": {"http": {"host": "127.0.0.2"}},
            "connectors": {"a": {"type": "memory"}, "b": {"type": "memory"}},
            "default_connector": "b",
            "topics": {"t": {}},
        }
    )
    assert (config.server.http.host, config.server.http.port) == ("127.0.0.2", 10105)
    assert config.connector_for("t") == "b"


def test_a_bad_filter_names_its_exact_key_and_line(tmp_path: Path) -> None:
    """A filter error points at the failing part of the spec, with its line in the file."""
    text = GOOD.replace(
        '    sink: {handler: "json:dumps"}\n',
        '    sink: {handler: "json:dumps"}\n'
        "    filter:\n"
        "      all:\n"
        "        - exact: {type: a}\n"
        "        - exactt: {type: b}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key is not None
    assert info.value.key.startswith("subscriptions[0].filter.all[1]")
    assert info.value.line == 13
    assert "subscription 'billing'" in str(info.value)


@pytest.mark.parametrize(
    ("dead_letter", "group"), [('"{topic}"', None), ("orders", None), ('"{group}"', "orders")]
)
def test_a_dead_letter_topic_that_is_the_subscriptions_own_names_its_key_and_line(
    tmp_path: Path, dead_letter: str, group: str | None
) -> None:
    """A subscription whose delivery.dead_letter resolves to its own topic fails the load
    at that key and line: its dead letters would be delivered again, for ever."""
    text = GOOD.replace("max_attempts: 3,", f"max_attempts: 3, dead_letter: {dead_letter},")
    if group is not None:
        text = text.replace("    topic: orders\n", f"    topic: orders\n    group: {group}\n")
    with pytest.raises(ConfigError, match="names the topic the subscription reads") as info:
        load_config(write(tmp_path, text))
    line = 10 if group is None else 11
    assert (info.value.key, info.value.line) == ("subscriptions[0].delivery.dead_letter", line)
    assert "subscription 'billing'" in str(info.value)
    fine = GOOD.replace("max_attempts: 3,", 'max_attempts: 3, dead_letter: "{topic}.retry",')
    policy = load_config(write(tmp_path, fine)).subscriptions[0].delivery
    assert policy.dead_letter_topic("orders", "billing") == "orders.retry"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"server": {"http": {"port": 70000}}}, "server.http.port"),
        ({"server": {"http": {"max_event_size": 0}}}, "server.http.max_event_size"),
        ({"server": {"webhook": {"max_connections": 0}}}, "server.webhook.max_connections"),
        ({"server": {"webhook": {"allowed_networks": ["10.0.0.0/8", "nope"]}}},
         "server.webhook.allowed_networks[1]"),
        ({"subscriptions": [{"name": "s", "topic": "t",
                             "sink": {"webhook": "http://127.0.0.1/", "max_batch": 0}}]},
         "subscriptions[0].sink.max_batch"),
        ({"subscriptions": [{"name": "s", "topic": "t",
                             "sink": {"webhook": "http://127.0.0.1/", "timeout": "0s"}}]},
         "subscriptions[0].sink.timeout"),
    ],
)  # fmt: skip
def test_server_and_webhook_values_are_checked_when_the_file_loads(
    override: dict[str, Any], key: str
) -> None:
    """Ports, size limits, the allow-list and webhook settings fail at load, naming the key."""
    with pytest.raises(ConfigError) as info:
        load_config(override)
    assert info.value.key == key


def test_import_handlers_names_the_key_and_line_of_a_handler_that_does_not_import(
    tmp_path: Path,
) -> None:
    """load_config(import_handlers=True) imports each handler; a missing module is a
    ConfigError at the handler's key and line, while a plain load does not import."""
    path = write(tmp_path, GOOD.replace('"json:dumps"', '"no_such_module_here:handle"'))
    assert load_config(path).subscriptions[0].sink is not None
    with pytest.raises(ConfigError, match="No module named 'no_such_module_here'") as caught:
        load_config(path, import_handlers=True)
    assert (caught.value.key, caught.value.line) == ("subscriptions[0].sink.handler", 9)
    assert load_config(write(tmp_path, GOOD), import_handlers=True).subscriptions


def test_an_enum_mistake_lists_the_valid_values(tmp_path: Path) -> None:
    """A value outside a Literal's set says which values the key accepts."""
    text = GOOD.replace(
        'sink: {handler: "json:dumps"}', 'sink: {webhook: "http://h/x", mode: batchh}'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.key == "subscriptions[0].sink.mode"
    assert "expected one of 'batch', 'binary', 'structured'" in str(caught.value)


def test_an_unknown_key_suggests_the_nearest_and_names_the_file_and_line(tmp_path: Path) -> None:
    """A misspelled key names the file, its line and the valid key it is nearest to."""
    path = write(tmp_path, GOOD.replace("level: debug", "levle: debug"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}, line 11: logging.levle: unknown key")
    assert "did you mean 'level'?" in str(caught.value)
    assert (caught.value.key, caught.value.line) == ("logging.levle", 11)


def test_a_connector_settings_typo_suggests_the_plugins_own_key() -> None:
    """An unknown key inside a connector's settings suggests the nearest key of its Config."""
    with pytest.raises(ConfigError, match="did you mean 'partitions'"):
        load_config({"connectors": {"default": {"type": "memory", "partitons": 2}}})


def test_an_environment_variable_mistake_names_the_variable() -> None:
    """A bad value, unknown key or list index from EVENTMESH__... names that variable."""
    cases = {
        "EVENTMESH__LOGGING__LEVEL": ("loud", "expected one of"),
        "EVENTMESH__LOGGING__LEVLE": ("debug", "did you mean 'level'"),
        "EVENTMESH__SUBSCRIPTIONS__0__NAME": ("x", "past the end of a list"),
    }
    for variable, (value, words) in cases.items():
        with pytest.raises(ConfigError) as caught:
            load_config(None, env={variable: value})
        assert words in str(caught.value)
        assert f"(set by the environment variable {variable})" in str(caught.value)
    with pytest.raises(ConfigError, match=r"\(set by --set logging.level\)"):
        load_config(None, overrides={"logging.level": "loud"})


@pytest.mark.parametrize(
    ("variable", "override"),
    [
        ("EVENTMESH__SUBSCRIPTIONS__²__NAME", "subscriptions.².name"),  # '²'.isdigit()
        ("EVENTMESH__SUBSCRIPTIONS__" + "9" * 5000, "subscriptions." + "9" * 5000),
        ("EVENTMESH__SUBSCRIPTIONS__" + "1" * 10, "subscriptions." + "1" * 10),
    ],
)
def test_an_override_index_that_is_not_ascii_digits_or_too_long_names_its_setter(
    variable: str, override: str
) -> None:
    """An override key's part that str.isdigit takes but is not 1-9 ASCII digits is a
    ConfigError naming the --set key or the variable (before, int() raised ValueError,
    and 5,000 digits hit its digit limit), and the message stays short."""
    with pytest.raises(ConfigError, match="is not a list index") as caught:
        load_config(None, env={variable: "x"})
    assert "(set by the environment variable EVENTMESH__SUBSCRIPTIONS__" in str(caught.value)
    assert len(str(caught.value)) < 400
    with pytest.raises(ConfigError, match="is not a list index") as caught:
        load_config(None, overrides={override: "x"})
    assert "(set by --set subscriptions." in str(caught.value)
    assert len(str(caught.value)) < 400
