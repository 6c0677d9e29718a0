"""Run every benchmark in bench/ and end with one summary table.

Every module named `*_bench.py` with a `main(argv)` runs in turn: first the ones that
measure the Performance issue's figures, in the issue's order, then the rest alphabetically.
Each returns its figures as `bench.results.Row`s; the summary lists them with their target,
the peer's figure from the same run (Postfix), met or not, and the 1-minute load average
when that benchmark started and ended. A failing benchmark is reported and the rest run.

    python bench/run.py [--quick] [--recipients N] [--only NAME ...]

`--quick` passes `--quick` to every benchmark (small sizes, for development; the figures
are then less steady). `--recipients` sets the campaign size of `pipeline_bench` (the
issue's 100,000: `--recipients 100000`; its 1,000,000 for the RSS figure: run
`python -m bench.pipeline_bench --recipients 1000000 --no-postfix` alone).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST = ("pipeline", "mta", "transactional", "resume", "embedded")
"""The benchmarks behind the Performance issue's table, in its order."""
ON_REQUEST = ("admin",)
"""Too long at full size for every run (admin: ~15 min of seeding 10M events): they run in
`--quick` runs and when named with `--only`."""


def _modules(only: list[str], quick: bool = False) -> list[str]:
    found = sorted(path.stem.removesuffix("_bench") for path in ROOT.glob("bench/*_bench.py"))
    ordered = [name for name in FIRST if name in found]
    ordered += [name for name in found if name not in FIRST]
    if not only and not quick:
        ordered = [name for name in ordered if name not in ON_REQUEST]
    return [name for name in ordered if not only or name in only]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks one after another and print the summary; 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--recipients", type=int, help="campaign size for pipeline_bench")
    parser.add_argument("--only", nargs="+", default=[], help="e.g. pipeline mta")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench.machine import describe, interpreter_at_end
    from bench.results import Row, load_average, summary

    rows: list[Row] = []
    failed: list[str] = []
    run_load = load_average()
    started_at = datetime.datetime.now().astimezone()
    machine = describe()
    print(f"bench: {started_at:%Y-%m-%d %H:%M %Z}, {'quick' if args.quick else 'full'} run")
    print(f"machine: {machine}\n")
    for name in _modules(args.only, args.quick):
        module = f"bench.{name}_bench"
        forwarded = ["--quick"] if args.quick else []
        if name == "pipeline" and args.recipients:
            forwarded += ["--recipients", str(args.recipients)]
        load = load_average()
        print(f"== {module} {' '.join(forwarded)} (load {load:.2f})", flush=True)
        started = time.perf_counter()
        try:
            produced = importlib.import_module(module).main(forwarded) or []
        except Exception as exc:
            failed.append(name)
            traceback.print_exc()
            print(f"!! {module} failed: {exc}", flush=True)
            produced = [Row(f"{module}", "—", f"failed: {str(exc).splitlines()[0][:120]}")]
        for row in produced:
            row.load = (load, load_average())
        rows.extend(produced)
        print(f"   ({time.perf_counter() - started:.1f} s)\n", flush=True)
    print(f"== summary ({started_at:%Y-%m-%d}, {'bench-quick' if args.quick else 'bench'})\n")
    print(summary(rows, (run_load, load_average()), f"{machine}; {interpreter_at_end()}"))
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
