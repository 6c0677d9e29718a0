"""A campaign end to end through Warta's MTA, and the same campaign through Postfix, one run.

Two legs, each with its own PostgreSQL and Redis, the same `warta worker` processes (one per
core), the same seeded campaign and the same C `smtp-sink`:

1. Warta: the workers submit to `warta mta`, which spools with fsync, signs with DKIM
   (RSA-2048) and delivers to the sink; done when the ledger shows every row delivered.
2. Postfix: the workers submit to a private Postfix, which relays the same messages
   unsigned to the sink; done when the sink has counted every message.

The figure is recipients / (schedule → done); the target is ≥ 1,000 msg/s and ≥ 1.3 times the
Postfix leg. Each leg also prints the CPU per message of every process over the run (from
/proc: workers, the MTA or all of Postfix's processes, all of PostgreSQL's, Redis, the sink),
the total of Warta + PostgreSQL + Redis (target ≤ 1.6 ms), and the peak RSS (VmHWM) of each
worker and the MTA after 10 % and at the end (target: flat, each < 150 MB; the issue's size
is 1,000,000 recipients: `--recipients 1000000 --no-postfix`). `--profile` records the Warta
leg's workers and MTA with py-spy and prints their top frames (the run is slower then).
`--pg-statements` loads `pg_stat_statements` into the Warta leg's PostgreSQL and prints its
top statements over the run, with calls and execution time per campaign message.
PostgreSQL runs with fsync off (the test suite's servers), as in every earlier figure.

    python -m bench.pipeline_bench [--recipients 20000] [--workers 2] [--no-postfix]
        [--profile] [--pg-statements] [--quick]

`BENCH_MTA_PROCESSES`, `BENCH_BATCHES` and `BENCH_CONNECTIONS` set WARTA_MTA_PROCESSES,
WARTA_WORKER_BATCHES (8) and WARTA_SENDER_CONNECTIONS (20).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from bench import postfix
from bench.campaign import Leg, run_leg
from bench.machine import cores
from bench.processes import ROOT
from bench.profiling import print_profiles
from bench.results import Row

TARGET_RATE = 1000.0
TARGET_RATIO = 1.3
TARGET_CPU_MS = 1.6
TARGET_RSS_MB = 150.0
RECIPIENTS = 20_000
QUICK_RECIPIENTS = 5000
WARTA_GROUPS = ("warta mta", "PostgreSQL (all backends)", "Redis")


def _warta_total(leg: Leg) -> float:
    """CPU ms per message of Warta's processes plus PostgreSQL and Redis."""
    return sum(leg.ms(g) for g in leg.cpu if g.startswith("worker") or g in WARTA_GROUPS)


def _peer_total(leg: Leg) -> float:
    """The same for the Postfix leg: workers, all of Postfix, PostgreSQL and Redis."""
    return sum(leg.ms(g) for g in leg.cpu if g != "smtp-sink")


def _print_leg(name: str, leg: Leg) -> None:
    def seconds(value: float | None) -> str:
        return f"after {value:.1f} s" if value is not None else "not yet"

    print(
        f"  {name}: {leg.recipients:,} recipients in {leg.elapsed:.1f} s = {leg.rate:,.0f} msg/s "
        f"(campaign finished {seconds(leg.handed_over)}, all at the sink {seconds(leg.at_sink)})"
    )
    print(f"    ledger: {leg.counts}")
    print("    CPU per message over the run (/proc utime+stime, children included):")
    for group in leg.cpu:
        print(f"      {group:<31} {leg.ms(group):6.2f} ms  ({leg.cpu[group]:6.1f} s)")
    total = _warta_total(leg) if leg.mta == "warta" else _peer_total(leg)
    label = "Warta + PostgreSQL + Redis" if leg.mta == "warta" else "workers + Postfix + PG + Redis"
    print(f"      {label:<31} {total:6.2f} ms")
    print(
        f"      {'(bench driver, not counted)':<31} {leg.driver_cpu / leg.recipients * 1000:6.2f} ms"
    )
    if leg.rss_end:
        print("    peak RSS (VmHWM) after 10 % → at the end:")
        for name, end in leg.rss_end.items():
            print(f"      {name:<31} {leg.rss_early.get(name, 0.0):6.0f} → {end:6.0f} MB")
    sys.stdout.flush()


STATEMENT_CHARS = 150
"""Of each statement's text in the `--pg-statements` table."""


def _print_statements(leg: Leg) -> None:
    """PostgreSQL's top statements over the run, per campaign message."""
    if not leg.statements:
        return
    n = leg.recipients
    print("    PostgreSQL statements over the run (pg_stat_statements, execution time only):")
    print(f"      {'ms/msg':>7} {'calls/msg':>9} {'µs/call':>8} {'rows/call':>9}  statement")
    for st in leg.statements:
        query = " ".join(st.query.split())
        if len(query) > STATEMENT_CHARS:
            query = query[: STATEMENT_CHARS - 1] + "…"
        per_call = st.total_ms * 1000 / st.calls if st.calls else 0.0
        rows = st.rows / st.calls if st.calls else 0.0
        print(
            f"      {st.total_ms / n:7.3f} {st.calls / n:9.3f} {per_call:8.0f} {rows:9.1f}  {query}"
        )
    sys.stdout.flush()


def _rows(warta: Leg, peer: Leg | None) -> list[Row]:
    n = f"{warta.recipients:,}"
    rate_ok = warta.rate >= TARGET_RATE
    ratio = warta.rate / peer.rate if peer else None
    campaign = Row(
        f"campaign end to end, {n} recipients: PostgreSQL + Redis, {len(_workers(warta))} "
        "`warta worker` + `warta mta` (spool fsync, DKIM RSA-2048) → smtp-sink, until the "
        "ledger shows all delivered",
        f"≥ {TARGET_RATE:,.0f} msg/s and ≥ {TARGET_RATIO}x Postfix",
        f"{warta.rate:,.0f} msg/s" + (f" = {ratio:.2f}x Postfix" if ratio else ""),
        f"Postfix {peer.rate:,.0f} msg/s (unsigned, schedule → sink)" if peer else "skipped",
        rate_ok and ratio is not None and ratio >= TARGET_RATIO,
        "campaign",
    )
    stages = ", ".join(
        f"{g.split(' (')[0]} {warta.ms(g):.2f}" for g in warta.cpu if g != "smtp-sink"
    )
    total = _warta_total(warta)
    cpu = Row(
        f"CPU per campaign message, Warta's processes + PostgreSQL + Redis, {n} recipients",
        f"≤ {TARGET_CPU_MS} ms",
        f"{total:.2f} ms ({stages})",
        f"Postfix leg: {_peer_total(peer):.2f} ms (workers + Postfix + PG + Redis)"
        if peer
        else "—",
        total <= TARGET_CPU_MS,
        "cpu",
    )
    peaks = [
        f"{name} {warta.rss_early.get(name, 0.0):.0f} → {end:.0f} MB"
        for name, end in warta.rss_end.items()
    ]
    flat = all(
        end <= max(warta.rss_early.get(name, 0.0), 1.0) * 1.1 for name, end in warta.rss_end.items()
    )
    small = all(end < TARGET_RSS_MB for end in warta.rss_end.values())
    rss = Row(
        f"worker and MTA peak RSS (VmHWM after 10 % → at the end), {n} recipients"
        + ("" if warta.recipients >= 1_000_000 else " (issue: 1,000,000)"),
        f"flat, each < {TARGET_RSS_MB:.0f} MB",
        "; ".join(peaks),
        "—",
        flat and small,
        "rss",
    )
    return [campaign, cpu, rss]


def _workers(leg: Leg) -> list[str]:
    return [g for g in leg.cpu if g.startswith("worker")]


async def _run(args: argparse.Namespace, tmp: Path) -> list[Row]:
    skip = None if args.no_postfix else postfix.unavailable()
    if skip:
        print(f"  Postfix {skip}: measuring Warta alone, no comparison", flush=True)
    with postfix.sink(tmp) as sink:
        print(f"  Warta leg: {args.recipients:,} recipients, {args.workers} workers …", flush=True)
        warta = await run_leg(
            tmp / "warta",
            args.recipients,
            args.workers,
            sink,
            "warta",
            profile=args.profile,
            statements=args.pg_statements,
        )
        _print_leg("Warta (warta mta, DKIM)", warta)
        _print_statements(warta)
        peer = None
        if not (args.no_postfix or skip):
            print("  Postfix leg: the same campaign, relayed unsigned …", flush=True)
            peer = await run_leg(tmp / "postfix", args.recipients, args.workers, sink, "postfix")
            _print_leg("Postfix (unsigned)", peer)
    if peer:
        print(f"  Warta / Postfix: {warta.rate / peer.rate:.2f}x (target ≥ {TARGET_RATIO}x)")
    print_profiles(warta.profiles)
    return _rows(warta, peer)


def main(argv: list[str] | None = None) -> list[Row]:
    """Parse arguments and run both legs once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, help=f"default {RECIPIENTS:,}")
    parser.add_argument("--workers", type=int, default=cores())
    parser.add_argument("--no-postfix", action="store_true", help="the Warta leg only")
    parser.add_argument("--profile", action="store_true", help="py-spy the Warta processes")
    parser.add_argument(
        "--pg-statements",
        action="store_true",
        help="PostgreSQL's top statements of the Warta leg (pg_stat_statements)",
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RECIPIENTS:,} recipients")
    args = parser.parse_args(argv if argv is not None else [])
    args.recipients = args.recipients or (QUICK_RECIPIENTS if args.quick else RECIPIENTS)
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="warta-pipeline-bench-"))
    os.chmod(tmp, 0o755)  # smtp-sink and the Postfix daemons run unprivileged
    try:
        return asyncio.run(_run(args, tmp))
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
