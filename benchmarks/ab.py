"""Before and after: one route of an earlier revision against the working tree, in turns.

    python benchmarks/ab.py http 7ff5d56      # HTTP batch ingress: bare, REV, working tree
    python benchmarks/ab.py grpc 7ff5d56      # gRPC PublishBatch: bare, REV, working tree
    python benchmarks/ab.py memory 7ff5d56    # in-memory route: 1 topic and 1,000 topics

The revision is exported (``git archive``) into the git-ignored ``.cache/ab/<rev>`` and
imported in place of the working tree's ``eventmesh``: for http and grpc its sidecar runs
in a child process beside the working tree's and a bare server, all three loaded in
turns by the same client (harness.interleave); for memory each round is a fresh process
of each tree, alternating. The figures are medians, printed with the load average and
the ratio to the bare baseline, so a change's effect is measured in one run of the
machine rather than read off two runs of different days.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from harness import Row, Section  # noqa: E402


def export(rev: str) -> Path:
    """The tree of ``rev`` under .cache/ab/<commit>, exported once."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    target = ROOT / ".cache" / "ab" / commit
    if not (target / "eventmesh").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, stdout=archive)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(target, filter="data")
    return target


def servers(route: str, old: Path, rounds: int, requests: int) -> dict[str, Any]:
    """http or grpc: the bare server, the old sidecar and the new one, loaded in turns."""
    import bench_grpc
    import bench_http
    from harness import Measure, interleave

    pool: list[Any]
    if route == "http":
        pool, per = bench_http.requests("batch", 50)
        module, bare_kind, kind, runner = "bench_http", "bare-http-decode", "sidecar-http", None
    else:
        pool, per = bench_grpc.calls("batch", 50)
        module, bare_kind, kind = "bench_grpc", "bare-grpc", "sidecar-grpc"
        runner = bench_grpc.load
    load = runner or bench_http.load

    def round_(server: bench_http.Server) -> Measure:
        figure = bench_http._once(server, pool, per, requests, load)
        return Measure(rate=figure.rate, cpu_us=figure.server_us)

    with contextlib.ExitStack() as stack:
        bare = stack.enter_context(bench_http.serve(module, bare_kind))
        sys.path.insert(0, str(old))  # the child imports the old tree's eventmesh
        before = stack.enter_context(bench_http.serve(module, kind))
        sys.path.remove(str(old))
        after = stack.enter_context(bench_http.serve(module, kind))
        medians = interleave(
            rounds,
            {
                name: functools.partial(round_, server)
                for name, server in (("bare", bare), ("before", before), ("after", after))
            },
        )
    return {name: (m.rate, m.cpu_us, m.load) for name, m in medians.items()}


_MEMORY_ROUND = """
import gc, json, os, sys, time, uvloop
sys.path.append({benchmarks!r})
import bench_memory as bm
events = bm._events({events})
out = {{}}
for name, run in (
    ("bare", lambda: bm._bare(events, 1)),
    ("one topic", lambda: bm._mesh(events, 1, 1)),
    ("1,000 topics", lambda: bm._mesh(events, 1, 1000)),
):
    gc.collect()
    cpu = time.process_time()
    out[name] = uvloop.run(run())
    out[name + " µs CPU"] = (time.process_time() - cpu) / len(events) * 1e6
out["load"] = os.getloadavg()[0]
out["eventmesh"] = sys.modules["eventmesh"].__file__
print(json.dumps(out))
"""
"""One round of the memory route in a fresh process: events/s of each setup, and the
process's CPU per event over each (start-up included: 1,000 subscriptions' worth for
the 1,000 topics), a steadier measure than the rate on a busy machine."""


def memory(old: Path, rounds: int, events: int) -> dict[str, Any]:
    """memory: a fresh process of each tree per round, alternating; the median rate and
    the least CPU per event of each."""
    code = _MEMORY_ROUND.format(benchmarks=str(HERE), events=events)
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for round_ in range(rounds):
        for name, tree in (("before", old), ("after", ROOT)):
            # Run in the tree: `python -c` puts the working directory first on sys.path.
            env = {**os.environ, "PYTHONPATH": str(tree)}
            answer = subprocess.run(
                [sys.executable, "-c", code],
                cwd=tree,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            figures = json.loads(answer.stdout.strip().splitlines()[-1])
            where = figures.pop("eventmesh")
            if not where.startswith(str(tree)):
                raise RuntimeError(f"the {name} round imported eventmesh from {where}")
            results[name].append(figures)
            print(f"    round {round_ + 1} {name}: {figures}", flush=True)
    # Rates by their median; CPU per event by its least, the round least disturbed.
    return {
        name: {
            key: (min if "CPU" in key else statistics.median)(r[key] for r in runs)
            for key in runs[0]
        }
        for name, runs in results.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("route", choices=("http", "grpc", "memory"))
    parser.add_argument("rev", help="the earlier revision (a commit, a tag, HEAD~3)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=100_000, help="memory: events a round")
    parser.add_argument(
        "--write", action="store_true", help="keep the result and rewrite docs/benchmarks.md"
    )
    args = parser.parse_args()
    old = export(args.rev)
    print(f"{args.route}: {args.rev} ({old.name}) against the working tree", flush=True)
    command = f"python benchmarks/ab.py {args.route} {args.rev} --rounds {args.rounds}"
    if args.events != 100_000:
        command += f" --events {args.events}"
    title = f"Before and after: {TITLES[args.route]} ({args.rev} against this tree)"
    section = Section(title)
    if args.route == "memory":
        medians = memory(old, args.rounds, args.events)
        for name, figures in medians.items():
            print(
                f"{name}: "
                + ", ".join(f"{k} {v:,.1f}" for k, v in figures.items() if k != "load")
                + f"; one topic/bare {figures['one topic'] / figures['bare']:.2f}x, "
                f"1,000 topics/one topic {figures['1,000 topics'] / figures['one topic']:.2f}x "
                f"(load {figures['load']:.1f})"
            )
        new, was = medians["after"], medians["before"]
        for setup, against in (("one topic", "bare"), ("1,000 topics", "one topic")):
            cpu = f"{setup} µs CPU"
            section.rows.append(
                Row(
                    name=f"{setup}, {args.events:,} events: {setup}/{against} was "
                    f"{was[setup] / was[against]:.2f}x, is {new[setup] / new[against]:.2f}x; "
                    f"CPU per event {was[cpu]:.1f} → {new[cpu]:.1f} µs",
                    value=new[setup],
                    unit="events/s",
                    baseline=was[setup],
                    baseline_name=f"{args.rev}, same run",
                    load=f"{new['load']:.1f} (before {was['load']:.1f})",
                )
            )
        section.notes.append(
            "Each round runs each tree in a fresh process, alternating; rates are the medians "
            "of the rounds, CPU per event (the whole process, start-up included: 1,000 "
            "subscriptions' worth for 1,000 topics) the least; bare asyncio queues took "
            f"{new['bare µs CPU']:.1f} µs per event. Reproduce: {command}."
        )
    else:
        figures = servers(args.route, old, args.rounds, 1_000)
        bare = figures["bare"][0]
        for name, (rate, cpu_us, load) in figures.items():
            print(
                f"{name}: {rate:,.0f} events/s, {cpu_us:.2f} µs server CPU per event, "
                f"{rate / bare:.2f}x bare (load {load})"
            )
        (rate, cpu_us, load), (was_rate, was_cpu, _) = figures["after"], figures["before"]
        section.rows.append(
            Row(
                name=f"100 events per request, 100,000 events a round: against the bare "
                f"server ({bare:,.0f} events/s) it was {was_rate / bare:.2f}x, is "
                f"{rate / bare:.2f}x; server CPU per event {was_cpu:.2f} → {cpu_us:.2f} µs",
                value=rate,
                unit="events/s",
                baseline=was_rate,
                baseline_name=f"{args.rev}, same run",
                load=load,
            )
        )
        section.notes.append(
            "The bare server, the old sidecar and this tree's run side by side, each in a "
            "process of its own, loaded in turns by the same client; medians of "
            f"{args.rounds} rounds. Reproduce: {command}."
        )
    if args.write:
        import run

        run.save(f"ab_{args.route}", section, quick=False)
        docs = ROOT / "docs" / "benchmarks.md"
        docs.write_text(run.render(run.load_all()), encoding="utf-8")
    return 0


TITLES = {
    "http": "HTTP batch ingress",
    "grpc": "gRPC PublishBatch",
    "memory": "in-memory route",
}


if __name__ == "__main__":
    sys.exit(main())
