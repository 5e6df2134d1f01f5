"""Run the benchmarks, print the results, and write docs/benchmarks.md.

    python benchmarks/run.py                  # every scenario
    python benchmarks/run.py --quick          # smaller runs, for a quick look
    python benchmarks/run.py memory cesql     # only these scenarios (bench_<name>.py)

Every figure is measured against a baseline in the same run (a bare asyncio queue, a
raw client, a hand-written lambda), so the ratio is what carries over between machines.
Each scenario's last results are kept in benchmarks/results/<name>.json, so running a
few scenarios updates their sections of docs/benchmarks.md and keeps the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Row, Section  # noqa: E402

RESULTS = HERE / "results"


def _fmt(value: float, unit: str) -> str:
    if unit.startswith("ns"):
        return f"{value:,.0f} {unit}"
    if value >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:,.2f} {unit}"


def _ratio(row: Row) -> str:
    ratio = row.ratio
    if ratio is None:
        return ""
    return f"{ratio:.2f}x" if row.higher_is_better else f"{1 / ratio:.2f}x the cost"


def save(name: str, section: Section, quick: bool) -> None:
    """Keep a scenario's results for later renders."""
    RESULTS.mkdir(exist_ok=True)
    record = {
        "when": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "quick": quick,
        "title": section.title,
        "notes": section.notes,
        "rows": [dataclasses.asdict(row) for row in section.rows],
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def load_all() -> list[tuple[str, Section, str]]:
    """Every kept scenario: (when, section, quick marker), in file-name order."""
    out = []
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        section = Section(record["title"], [Row(**r) for r in record["rows"]], record["notes"])
        out.append((record["when"], section, " (quick run)" if record["quick"] else ""))
    return out


def render(sections: list[tuple[str, Section, str]]) -> str:
    """docs/benchmarks.md for these sections."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `python benchmarks/run.py`; do not edit by hand. Each figure sits next to a",
        "baseline measured in the same run on the same machine, so read the ratio first.",
        "",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()} on {platform.system()}",
        "",
    ]
    for when, section, quick in sections:
        lines += [f"## {section.title}", "", f"Measured {when}{quick}.", ""]
        lines += ["| scenario | eventmesh | baseline | ratio | goal |", "|---|---|---|---|---|"]
        for row in section.rows:
            base = (
                f"{_fmt(row.baseline, row.unit)} ({row.baseline_name})"
                if row.baseline is not None
                else ""
            )
            load = f" (load {row.load})" if row.load else ""
            lines.append(
                f"| {row.name} | {_fmt(row.value, row.unit)}{load} | {base} | {_ratio(row)} "
                f"| {row.goal} |"
            )
        lines.append("")
        lines += [f"- {note}" for note in section.notes]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    names = args.names or sorted(p.stem[6:] for p in HERE.glob("bench_*.py"))
    for name in names:
        module = importlib.import_module(f"bench_{name}")
        print(f"== {module.TITLE}", flush=True)
        started = time.perf_counter()
        section = module.main(args.quick)
        for row in section.rows:
            base = (
                f"  vs {_fmt(row.baseline, row.unit)} {row.baseline_name}" if row.baseline else ""
            )
            load = f"  (load {row.load})" if row.load else ""
            print(
                f"  {row.name}: {_fmt(row.value, row.unit)}{base}  {_ratio(row)}{load}",
                flush=True,
            )
        print(f"  ({time.perf_counter() - started:.1f} s)")
        if not args.no_write:
            save(name, section, args.quick)
    if not args.no_write:
        out = HERE.parent / "docs" / "benchmarks.md"
        out.write_text(render(load_all()), encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
