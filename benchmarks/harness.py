"""The small harness every benchmark scenario uses.

A scenario module ``benchmarks/bench_<name>.py`` defines ``TITLE`` (a heading for
docs/benchmarks.md) and ``def main(quick: bool) -> Section``. Each row measures one
thing and, where the scenario has one, the bare baseline measured in the same run,
so the figure that matters is a ratio and not an absolute number from some other day.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable, Mapping
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
    load: str = ""
    """The machine's 1-minute load average while this figure was measured (rounds' range)."""

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


def load_average() -> float:
    """The machine's 1-minute load average now (0.0 where the system keeps none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


@dataclass
class Measure:
    """One round of one setup: a rate, the CPU time per item over the same span, and the
    load average when the round ended."""

    rate: float
    cpu_us: float = 0.0
    load: float = field(default_factory=load_average)
    note: str = ""


@dataclass
class Median:
    """The median of a setup's rounds, with every round's rate and load kept for the notes."""

    rate: float
    cpu_us: float
    rounds: list[Measure]

    @property
    def load(self) -> str:
        loads = sorted(m.load for m in self.rounds)
        if loads[0] == loads[-1]:
            return f"{loads[0]:.1f}"
        return f"{loads[0]:.1f}-{loads[-1]:.1f}"

    @property
    def notes(self) -> str:
        return "; ".join(m.note for m in self.rounds if m.note)


def interleave(rounds: int, setups: Mapping[str, Callable[[], Measure]]) -> dict[str, Median]:
    """Run the setups in turn, ``rounds`` times (a, b, c, a, b, c, ...), and return the
    median of each: a slow spell of the machine falls on every setup alike, and one odd
    round decides nothing. Prints each round with the load average as it goes."""
    results: dict[str, list[Measure]] = {name: [] for name in setups}
    for round_ in range(rounds):
        for name, run in setups.items():
            gc.collect()
            measure = run()
            results[name].append(measure)
            print(
                f"    round {round_ + 1} {name}: {measure.rate:,.0f}/s, "
                f"{measure.cpu_us:.1f} µs CPU each, load {measure.load:.2f}"
                + (f" ({measure.note})" if measure.note else ""),
                flush=True,
            )
    return {
        name: Median(
            statistics.median(m.rate for m in ms), statistics.median(m.cpu_us for m in ms), ms
        )
        for name, ms in results.items()
    }


class Clock:
    """Rate over the span from the first to the last of ``total`` items, and the process's
    CPU time per item over that span (a consumer's start-up is not counted). The items
    of the first tick arrived before the span began: they are not counted either, so a
    client that hands over a large first batch gains nothing from it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu = 0.0
        self._cpu0 = 0.0
        self._before = 0

    def tick(self, n: int = 1) -> bool:
        """Count ``n`` more; True once ``total`` are in."""
        now = time.perf_counter()
        if not self.count:
            self.first = now
            self._cpu0 = time.process_time()
            self._before = n
        self.count += n
        self.last = now
        if self.count >= self.total:
            if not self.cpu:
                self.cpu = time.process_time() - self._cpu0
            return True
        return False

    def stop(self) -> None:
        """End the span where it is (fewer than ``total`` came)."""
        if not self.cpu and self.count:
            self.cpu = time.process_time() - self._cpu0

    def measure(self, note: str = "") -> Measure:
        n = max(self.count - self._before, 1)
        return Measure(
            rate=n / max(self.last - self.first, 1e-9), cpu_us=self.cpu / n * 1e6, note=note
        )


def per_call_ns(fn: Callable[[], object], calls: int, repeat: int = 5) -> float:
    """Nanoseconds per call of ``fn``, the best of ``repeat`` loops of ``calls`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def cli(
    doc: str,
    main: Callable[[bool], Section],
    profile: Callable[[bool], str],
    flags: dict[str, str] | None = None,
) -> int:
    """Run a scenario module on its own: print its rows and notes, or with --profile,
    what ``profile(quick)`` returns (a profile of the module's hottest path). ``flags``
    are the module's own switches (name: help), which it reads from ``sys.argv``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="profile the hottest path")
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    for flag, text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=text)
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
