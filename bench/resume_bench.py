"""A SIGKILLed worker's batches resumed by another worker: how long, and nothing lost or doubled.

PostgreSQL and Redis as real servers, `warta mta` delivering to a sink that writes down
every recipient it receives (`bench.recording_sink`), and two `warta worker`s with the
product's default settings. A campaign of 3,000 recipients is scheduled; once some hundreds
have reached the sink, both workers are SIGKILLed and a third is started. The figure is the
time from the kill to the last message at the sink (target ≤ 30 s). Then every recipient
must have reached the sink exactly once (0 lost, 0 doubled) and the ledger must show all
delivered. The wait is capped (`--cap`, 700 s; 120 s with `--quick`): past it the figure
is reported as "> cap" with what had arrived by then.

    python -m bench.resume_bench [--recipients 3000] [--kill-after 300] [--cap 700] [--quick]
        [--keep] [--env WARTA_BATCH_LEASE=6 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.campaign import WORKER_READY, ledger, schedule, seed, stack, start_mta
from bench.processes import ROOT, free_port, listening, logged, process, warta
from bench.recording_sink import Arrivals
from bench.results import Row
from workers.mta import spool_format

TARGET_SECONDS = 30.0
RECIPIENTS = 3000
KILL_AFTER = 300
CAP = 700.0
QUICK_CAP = 120.0
LEDGER_WAIT = 60.0


async def _run(args: argparse.Namespace, tmp: Path) -> Row:
    recipients = args.recipients
    arrivals_log = tmp / "arrivals.tsv"
    sink_port, submission = free_port(), free_port()
    async with stack(tmp) as st:
        campaign_id = await seed(st.sessionmaker, recipients)
        sink_cmd = [sys.executable, "-m", "bench.recording_sink", str(sink_port), str(arrivals_log)]
        env = st.env(submission, **dict(item.split("=", 1) for item in args.env))
        with (
            process(sink_cmd, tmp / "sink.log", cwd=ROOT) as sink,
            start_mta(st, submission, sink_port, tmp / "mta.log") as mta,
            process(warta("worker"), tmp / "worker1.log", env=env) as first,
            process(warta("worker"), tmp / "worker2.log", env=env) as second,
        ):
            await listening(sink_port, sink, tmp / "sink.log")
            await listening(submission, mta, tmp / "mta.log")
            await logged(WORKER_READY, first, tmp / "worker1.log")
            await logged(WORKER_READY, second, tmp / "worker2.log")
            await schedule(st.sessionmaker, campaign_id)
            while (arrived := Arrivals.read(arrivals_log).count) < args.kill_after:
                if arrived >= recipients or mta.poll() is not None:
                    raise RuntimeError(f"nothing to kill: {arrived} arrived; see {tmp}")
                await asyncio.sleep(0.05)
            for worker in (first, second):
                worker.send_signal(signal.SIGKILL)
            killed_at = time.time()
            at_kill = Arrivals.read(arrivals_log).count
            print(f"  SIGKILLed both workers with {at_kill:,} of {recipients:,} at the sink")
            with process(warta("worker"), tmp / "worker3.log", env=env):
                arrivals = Arrivals.read(arrivals_log)
                while len(arrivals.per_recipient) < recipients:
                    if time.time() - killed_at > args.cap:
                        break
                    await asyncio.sleep(0.2)
                    arrivals = Arrivals.read(arrivals_log)
                complete = len(arrivals.per_recipient) >= recipients
                waited_until = time.time()
                deadline = time.monotonic() + LEDGER_WAIT
                status, counts = await ledger(st.sessionmaker, campaign_id)
                while complete and counts.get("delivered", 0) < recipients:
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
                    status, counts = await ledger(st.sessionmaker, campaign_id)
                arrivals = Arrivals.read(arrivals_log)
    missing = recipients - len(arrivals.per_recipient)
    doubled = arrivals.doubled
    print(f"  ledger: {status} {counts}")
    print(
        f"  at the sink: {arrivals.count:,} messages for {len(arrivals.per_recipient):,} "
        f"recipients; missing {missing:,}, doubled {doubled:,}"
    )
    pause = arrivals.longest_pause(killed_at, None if complete else waited_until)
    last = arrivals.last - killed_at
    print(
        f"  after the kill: the sink waited at most {pause:.1f} s for a message; last {last:+.1f} s"
    )
    if missing:
        _explain_missing(tmp / "spool", set(arrivals.per_recipient), killed_at)
    if complete:
        seconds = arrivals.last - killed_at
        delivered = counts.get("delivered", 0)
        value = (
            f"{seconds:.1f} s; lost {missing}, doubled {doubled}, ledger {delivered:,} delivered"
        )
        met = seconds <= TARGET_SECONDS and missing == 0 and doubled == 0
        met = met and delivered == recipients
        print(f"  kill → last message at the sink: {seconds:.1f} s")
    else:
        value = (
            f"> {args.cap:.0f} s (the cap): {len(arrivals.per_recipient):,} of {recipients:,} at "
            f"the sink by then (the last {last:.0f} s after the kill, after a {pause:.0f} s "
            f"pause), doubled {doubled}"
        )
        met = False
        print(f"  kill → last message at the sink: more than {args.cap:.0f} s (the cap)")
    return Row(
        f"SIGKILLed workers' in-flight batches resumed ({recipients:,}-recipient campaign, "
        f"two of two workers killed after {at_kill:,} at the sink, a third started)",
        f"≤ {TARGET_SECONDS:.0f} s, 0 lost, 0 doubled",
        value,
        "—",
        met,
        "resume",
    )


def _explain_missing(spool: Path, arrived: set[str], killed_at: float) -> None:
    """Print which recipients missing at the sink are still queued in the MTA's spool."""
    queued: dict[str, dict[str, Any]] = {}
    for folder in spool.rglob("msg"):
        for found in spool_format.queued_envelopes(folder.parent).values():
            envelope = json.loads(found.to_json())
            for recipient in envelope["recipients"]:
                if recipient not in arrived:
                    queued[recipient] = envelope
    print(f"  of the missing, {len(queued)} are queued in the MTA's spool:")
    for recipient, envelope in sorted(queued.items())[:10]:
        state = envelope["states"].get(recipient, {})
        print(
            f"    {recipient}: accepted {envelope['received_at'] - killed_at:+.1f} s after the "
            f"kill, next attempt {envelope['next_attempt_at'] - killed_at:+.1f} s, "
            f"{state.get('attempts', 0)} attempts, last reply {state.get('last_reply')!r}"
        )


def main(argv: list[str] | None = None) -> list[Row]:
    """Parse arguments and run the kill-and-resume once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=RECIPIENTS)
    parser.add_argument("--kill-after", type=int, default=KILL_AFTER)
    parser.add_argument("--cap", type=float, help=f"seconds; default {CAP:.0f}")
    parser.add_argument("--quick", action="store_true", help=f"cap at {QUICK_CAP:.0f} s")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, spool)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="WARTA_X=VALUE",
        help="a setting for the workers (repeatable), e.g. WARTA_BATCH_TIMEOUT=2",
    )
    args = parser.parse_args(argv if argv is not None else [])
    args.cap = args.cap or (QUICK_CAP if args.quick else CAP)
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="warta-resume-bench-"))
    try:
        return [asyncio.run(_run(args, tmp))]
    finally:
        if args.keep:
            print(f"  logs and spool kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
