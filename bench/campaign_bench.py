"""End to end without an MTA: a campaign from schedule to the last message accepted by a sink.

PostgreSQL and Redis run as real servers; `warta worker` runs as separate processes (one
per core by default) and submits straight to Postfix's C `smtp-sink`. The figure is
recipients / (schedule → the campaign is finished, i.e. the sink accepted every message):
the ceiling of the workers alone. The CPU per message of every process and the workers'
peak RSS (VmHWM, after 10 % and at the end) are printed beside it.

Through Warta's MTA (with Postfix beside it) is `bench.pipeline_bench`; `--mta` here runs
its Warta leg alone.

    python -m bench.campaign_bench [--recipients 100000] [--workers 2] [--quick] [--mta]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench import pipeline_bench, postfix
from bench.campaign import run_leg
from bench.machine import cores
from bench.processes import ROOT
from bench.results import Row

TARGET = 1500.0
RECIPIENTS = 100_000
QUICK_RECIPIENTS = 5000


async def _run(recipients: int, workers: int, tmp: Path) -> list[Row]:
    with postfix.sink(tmp) as sink:
        leg = await run_leg(tmp / "direct", recipients, workers, sink, "none")
    print(f"  workers: {workers}; sink: smtp-sink; ledger: {leg.counts}")
    print(f"  {recipients:,} recipients in {leg.elapsed:.1f} s = {leg.rate:,.0f} msg/s")
    print("  CPU per message: " + ", ".join(f"{g} {leg.ms(g):.2f} ms" for g in leg.cpu))
    peaks = ", ".join(
        f"{name} {leg.rss_early.get(name, 0.0):.0f} → {end:.0f} MB"
        for name, end in leg.rss_end.items()
    )
    print(f"  worker peak RSS (VmHWM) after 10 % → at the end: {peaks}")
    return [
        Row(
            f"campaign end to end without an MTA, {recipients:,} recipients, {workers} workers "
            "→ smtp-sink, PostgreSQL + Redis",
            f"≥ {TARGET:,.0f} msg/s",
            f"{leg.rate:,.0f} msg/s; worker VmHWM {peaks}",
            "—",
            leg.rate >= TARGET,
        )
    ]


def main(argv: list[str] | None = None) -> list[Row]:
    """Parse arguments and run the benchmark once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, help=f"default {RECIPIENTS:,}")
    parser.add_argument("--workers", type=int, default=cores())
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RECIPIENTS:,} recipients")
    parser.add_argument("--mta", action="store_true", help="bench.pipeline_bench --no-postfix")
    args = parser.parse_args(argv if argv is not None else [])
    if args.mta:
        forwarded = ["--no-postfix", "--workers", str(args.workers)]
        forwarded += ["--recipients", str(args.recipients)] if args.recipients else []
        return pipeline_bench.main(forwarded + (["--quick"] if args.quick else []))
    recipients = args.recipients or (QUICK_RECIPIENTS if args.quick else RECIPIENTS)
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="warta-campaign-bench-"))
    os.chmod(tmp, 0o755)  # smtp-sink runs unprivileged
    try:
        return asyncio.run(_run(recipients, args.workers, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
