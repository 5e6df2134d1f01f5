"""The small harness every benchmark scenario uses.

A scenario module ``benchmarks/bench_<name>.py`` defines ``TITLE`` (a heading for
docs/benchmarks.md) and ``def main(quick: bool) -> Section``. Each row measures one
thing and, where the scenario has one, the bare baseline measured in the same run,
so the figure that matters is a ratio and not an absolute number from some other day.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Row:
    """One measured figure, with its same-run baseline when there is one."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    higher_is_better: bool = True
    goal: str = ""

    @property
    def ratio(self) -> float | None:
        """value / baseline for rates, baseline / value for costs: above 1 beats the baseline."""
        if not self.baseline or not self.value:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value


@dataclass
class Section:
    """The rows of one scenario module, with notes on what was measured and how."""

    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def best_of(runs: int, fn: Callable[[], float]) -> float:
    """The best of ``runs`` calls of ``fn`` (each returns a rate): the least disturbed run."""
    gc.collect()
    return max(fn() for _ in range(runs))


def per_call_ns(fn: Callable[[], object], calls: int, repeat: int = 5) -> float:
    """Nanoseconds per call of ``fn``, the best of ``repeat`` loops of ``calls`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def cli(doc: str, main: Callable[[bool], Section], profile: Callable[[bool], str]) -> int:
    """Run a scenario module on its own: print its rows and notes, or with --profile,
    what ``profile(quick)`` returns (a profile of the module's hottest path)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="profile the hottest path")
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    args = parser.parse_args()
    if args.profile:
        print(profile(args.quick))
        return 0
    section = main(args.quick)
    for row in section.rows:
        print(
            f"{row.name}: {row.value:,.0f} {row.unit} vs {row.baseline or 0:,.0f} "
            f"({row.baseline_name}): {row.ratio or 0:.2f}x"
        )
    for note in section.notes:
        print(f"- {note}")
    return 0
