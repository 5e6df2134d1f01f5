"""Each connector plugin in plugins/ depends on a range of core versions that holds this one."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import eventmesh

PLUGINS = sorted((Path(__file__).resolve().parents[1] / "plugins").glob("*/pyproject.toml"))


@pytest.mark.parametrize("pyproject", PLUGINS, ids=[p.parent.name for p in PLUGINS])
def test_the_plugin_pins_a_core_range_that_holds_this_core(pyproject: Path) -> None:
    """The requirement on eventmesh has a lower and an upper bound, and this core's
    version is inside it (a core release that breaks plugins must say so)."""
    deps = tomllib.loads(pyproject.read_text("utf-8"))["project"]["dependencies"]
    (core,) = [Requirement(d) for d in deps if Requirement(d).name == "eventmesh"]
    operators = {spec.operator for spec in core.specifier}
    assert operators & {">=", ">", "~=", "=="}, f"{core} has no lower bound"
    assert operators & {"<", "<=", "~=", "=="}, f"{core} has no upper bound"
    assert core.specifier.contains(eventmesh.__version__, prereleases=True)
