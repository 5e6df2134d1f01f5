"""The CloudEvents SQL TCK (cesql_tck/, copied unchanged from the spec), one case per test.

Each case builds its event (the TCK ``event``, else a fixed valid base event), applies
``eventOverrides``, compiles the expression and checks the value and the exact error kinds.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

from eventmesh.event import Event
from eventmesh.pipeline import cesql

pytestmark = pytest.mark.core  # CI runs these on the core alone

TCK_DIR = pathlib.Path(__file__).parent / "cesql_tck"
BASE_EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "tck-base-id",
    "source": "/eventmesh/tck",
    "type": "io.eventmesh.tck",
    "time": "2024-05-01T12:00:00Z",
    "datacontenttype": "application/json",
    "data": {"hello": "world"},
}


class _TckLoader(yaml.SafeLoader):
    """The TCK's YAML, read as its authors mean it.

    An ``expression`` or ``name`` is always the text as written (``expression: tRuE`` is
    the expression ``tRuE``, not the boolean), and unquoted timestamps stay strings, as
    they are in a JSON-format event.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        for key_node, value_node in node.value:
            if key_node.value in ("expression", "name") and isinstance(value_node, yaml.ScalarNode):
                mapping[key_node.value] = value_node.value
        return mapping


_TckLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load_cases() -> list[Any]:
    cases = []
    for path in sorted(TCK_DIR.glob("*.yaml")):
        suite = yaml.load(path.read_text(encoding="utf-8"), Loader=_TckLoader)
        for test in suite["tests"]:
            cases.append(pytest.param(test, id=f"{path.stem}: {test['name']}"))
    return cases


CASES = _load_cases()


def _event(test: dict[str, Any]) -> Event:
    obj = dict(test.get("event") or BASE_EVENT)
    obj.update(test.get("eventOverrides") or {})
    return Event.from_dict(obj)


def test_the_whole_tck_is_here() -> None:
    """All 275 TCK cases are collected, from every YAML file, none skipped."""
    print(f"CESQL TCK: {len(CASES)} cases from {len(list(TCK_DIR.glob('*.yaml')))} files")
    assert len(CASES) == 275


@pytest.mark.parametrize("test", CASES)
def test_tck(test: dict[str, Any]) -> None:
    """The expression yields the TCK's value and exactly the TCK's error kind (or none)."""
    event = _event(test)
    if test.get("error") == "parse":
        with pytest.raises(cesql.ParseError) as raised:
            cesql.compile(test["expression"])
        assert raised.value.kind == "parse"
        return
    result = cesql.compile(test["expression"]).evaluate(event)
    expected_kinds = [test["error"]] if "error" in test else []
    assert [error.kind for error in result.errors] == expected_kinds, result.errors
    assert result.value == test["result"]
    assert type(result.value) is type(test["result"])
