"""Benchmarks of fibreflow.qfieldcloud against what an operator would otherwise do (issue 7).

Run from the collection root after ``make setup``::

    .venv/bin/python bench/bench.py            # one complete run (about 15 minutes), writes bench/RESULTS.md
    .venv/bin/python bench/bench.py --quick    # fewer rounds (about 6 minutes), writes tests/output/bench/RESULTS.md

Steps (``--steps 1,3`` runs a subset):

1. diagnose: ``playbooks/diagnose.yml`` against ``bench/community_docker_diagnose.yml`` (the same information
   through community.docker modules), ``bench/empty.yml`` (the floor), an ad-hoc ``ping`` and the bare
   ``qfc_sync_facts`` module call, run alternately on one healthy stand-in.
2. converged ``playbooks/site.yml`` (``changed=0``) against ``bench/manual_sequence.sh`` (the field guide).
3. time to repair each worker fault of the stand-in: from broken to ``playbooks/verify.yml`` passing.
4. fleet: ``diagnose.yml`` over 1, 4 and 8 stand-in stacks (one inventory host each, local connection),
   wall time and peak memory of the ansible process tree.
5. queue size: ``qfc_sync_facts`` and ``queue.read_database`` with 10 and 100,000 pending jobs, SQL statements
   counted in-process, ``EXPLAIN ANALYZE`` of each statement.

Commands of one step run alternately (round robin), so that the noise of a shared machine spreads over all of
them; compare ratios, not absolute times. Every stack the script makes is named ``bn...`` and removed at the end,
also when a step fails or the run is interrupted. Raw numbers go to ``tests/output/bench/results.json``.

The script is the entry point; the work is in three files beside it: ``measure.py`` (timing, memory sampling,
parsing what was measured), ``steps.py`` (the stacks and the five steps) and ``report.py`` (RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from measure import BENCH, OUT, REPO, log, machine, versions
from report import render


# -------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a check that everything runs)")
    parser.add_argument("--steps", default="1,2,3,4,5", help="comma-separated steps to run (default: all)")
    parser.add_argument("--faults", help="comma-separated worker faults for step 3 (default: steps.WORKER_FAULTS)")
    parser.add_argument(
        "--output", type=Path, help="report path (default bench/RESULTS.md; --quick: tests/output/bench)"
    )
    parser.add_argument("--prefix", default=f"bn{os.getpid() % 10000:04d}", help="stack name prefix (starts with bn)")
    parser.add_argument("--render-only", type=Path, metavar="RESULTS_JSON", help="only write the report of a raw file")
    args = parser.parse_args(argv)
    if args.render_only:
        output = args.output or BENCH / "RESULTS.md"
        output.write_text(render(json.loads(args.render_only.read_text())))
        return 0
    if not args.prefix.startswith("bn"):
        parser.error("--prefix must start with bn")
    # The steps load the stand-in helpers and the collection's module_utils: --render-only needs neither.
    import steps as bench_steps  # noqa: PLC0415

    args.faults = [f for f in args.faults.split(",") if f] if args.faults else list(bench_steps.WORKER_FAULTS)
    steps = {int(s) for s in args.steps.split(",") if s}
    output = args.output or (OUT / "RESULTS.md" if args.quick else BENCH / "RESULTS.md")
    if not (REPO / "collections" / "ansible_collections" / "fibreflow" / "qfieldcloud").exists():
        parser.error("run `make setup` first (collections/ link missing)")

    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(OUT / "state", ignore_errors=True)

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    bench = bench_steps.Bench(args)
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "versions": versions(),
    }
    order = [
        (1, bench.step_diagnose),
        (2, bench.step_site),
        (3, bench.step_repair),
        (4, bench.step_fleet),
        (5, bench.step_queue),
    ]
    failed = []
    try:
        for number, step in order:
            if number not in steps:
                continue
            try:
                step()
            except Exception as exc:  # one broken step must not lose the others' numbers
                log(f"step {number} failed: {exc}")
                failed.append(f"step {number}: {exc}")
    finally:
        bench.stacks.close()
    meta["wall_min"] = (time.perf_counter() - t0) / 60
    meta["load_end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    bench.results["meta"] = meta
    bench.results["failed_steps"] = failed
    raw = OUT / "results.json"
    raw.write_text(json.dumps(bench.results, indent=1, default=str))
    report = render(bench.results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    shown = output.relative_to(REPO) if output.is_relative_to(REPO) else output
    log(f"report: {shown}; raw numbers: {raw.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
