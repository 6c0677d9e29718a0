"""The embedded defaults, as `make run` runs them: SQLite, embedded Redis, one worker, one MTA.

`warta migrate` and `warta dev` run in a fresh directory with no WARTA_* settings but free
ports (so a developer's own `make run` on this machine is not disturbed): the database is
`var/warta.db` (SQLite), Redis is the embedded one under `var/`, and the MTA delivers in
`capture` mode into `var/maildir`, unsigned, as a fresh checkout does. A campaign of 1,000
recipients is seeded and scheduled as the API's `POST …/schedule` does it (the state change,
then the start job enqueued at once; `--cron` leaves the start to the scheduler's cron, up to
a second later); the figure is recipients / (schedule → the ledger shows all delivered).
`--split` runs `warta mta` and `warta worker` as two processes sharing the embedded Redis
instead of `warta dev` (API and worker, with the MTA in its child process `warta dev-mta`). The CPU per message of the Warta process(es) (user and system)
and of the embedded Redis is printed beside it, with a timeline of the run's milestones.
`--set WARTA_X=value` passes a setting (any environment variable) to the Warta processes:
`--set PYTHONPATH=<another checkout>` runs that code under the same benchmark, for A/B.

    python -m bench.embedded_bench [--recipients 1000] [--split] [--cron] [--set K=V] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from bench.campaign import ledger, schedule, seed
from bench.processes import ROOT, cpu_by_group, free_port, listening, process, stop, warta
from bench.profiling import Profiler, print_profiles
from bench.results import Row

TARGET = 500.0
RECIPIENTS = 1000
TIMEOUT = 900.0
POLL = 0.1
"""Seconds between looks at the ledger (and the Maildir): the timeline's resolution."""


class Timeline:
    """When the campaign passed each milestone, seconds after it was scheduled.

    Where the time goes: the start (the scheduler's cron and the start job), the hand-over
    to the MTA (the ledger's `sent`, or already `delivered`), the capture Maildir, the
    MTA's reports in the ledger.
    """

    def __init__(self, started_at: float, recipients: int, maildir: Path) -> None:
        self.started_at = started_at
        self.recipients = recipients
        self.maildir = maildir
        self.seen: dict[str, float] = {}

    def _mark(self, name: str, reached: bool) -> None:
        if reached and name not in self.seen:
            self.seen[name] = time.perf_counter() - self.started_at

    def observe(self, status: str, counts: dict[str, int]) -> None:
        """Note the milestones reached by now (called every poll)."""
        handed = counts.get("sent", 0) + counts.get("delivered", 0)
        stored = sum(1 for _ in self.maildir.iterdir()) if self.maildir.exists() else 0
        self._mark("campaign running", status != "scheduled")
        self._mark("first handed to the MTA", handed > 0)
        self._mark("first in the Maildir", stored > 0)
        self._mark("first delivered in the ledger", counts.get("delivered", 0) > 0)
        self._mark("all handed to the MTA", handed >= self.recipients)
        self._mark("all in the Maildir", stored >= self.recipients)

    def print(self) -> None:
        """One line: each milestone and when it was first seen (polled every POLL seconds)."""
        print("  timeline: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.seen.items()))


def _user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of one process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _dev_children(pid: int) -> dict[str, int]:
    """The Warta processes `warta dev` started (its MTA), by command: counted on their own."""
    from bench.processes import descendants

    found = {}
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if len(args) > 2 and Path(args[1].decode()).name == "warta":
                found[f"warta {args[2].decode()}"] = child
    return found


def _embedded_redis_pid(var: Path) -> int:
    import redis

    from app.core.redis import socket_path_for

    client = redis.Redis(unix_socket_path=str(socket_path_for(var)))
    try:
        return int(cast(dict[str, Any], client.info("server"))["process_id"])
    finally:
        client.close()


def _stop_embedded_redis(var: Path) -> None:
    """Make sure the embedded Redis is gone before its directory is removed.

    Its owner shuts it down on SIGTERM; if it is still there (the owner was killed, or did
    not), say so and stop it, so that no redis-server outlives the benchmark.
    """
    from app.core.redis import ping, socket_path_for

    if not ping(socket_path_for(var)):
        return
    pid = _embedded_redis_pid(var)
    print(f"  !! the embedded Redis (pid {pid}) outlived the Warta processes; stopping it")
    os.kill(pid, signal.SIGKILL)


async def _start_now(var: Path, campaign_id: int) -> None:
    """Enqueue the start job on the embedded Redis, as the API's schedule endpoint does."""
    from arq import create_pool

    from app.core.jobs import enqueue_start
    from app.core.redis import EmbeddedRedis, arq_redis_settings

    pool = await create_pool(arq_redis_settings(EmbeddedRedis(var).url))
    try:
        await enqueue_start(pool, campaign_id)
    finally:
        await pool.aclose()


async def _run(
    recipients: int,
    split: bool,
    tmp: Path,
    profile: bool = False,
    cron: bool = False,
    settings: Sequence[str] = (),
) -> Row:
    from app.core.database import create_engine, create_sessionmaker
    from app.core.settings import Settings

    submission, api = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARTA_")}
    env.update(
        WARTA_API_PORT=str(api),
        WARTA_MTA_SUBMISSION=f"127.0.0.1:{submission}",
        WARTA_MTA_INBOUND=f"127.0.0.1:{free_port()}",
    )
    env.update(setting.split("=", 1) for setting in settings)  # --set, for A/B of a setting
    subprocess.run(warta("migrate"), env=env, cwd=tmp, check=True, capture_output=True)
    url = f"sqlite+aiosqlite:///{tmp / 'var' / 'warta.db'}"
    engine = create_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    sessionmaker = create_sessionmaker(engine)
    try:
        campaign_id = await seed(sessionmaker, recipients)
        with contextlib.ExitStack() as started:
            if split:
                mta = started.enter_context(
                    process(warta("mta"), tmp / "mta.log", env=env, cwd=tmp)
                )
                await listening(submission, mta, tmp / "mta.log")
                worker = started.enter_context(
                    process(warta("worker"), tmp / "worker.log", env=env, cwd=tmp)
                )
                procs = {"warta mta": mta, "warta worker": worker}
            else:
                dev = started.enter_context(
                    process(warta("dev"), tmp / "dev.log", env=env, cwd=tmp)
                )
                await listening(api, dev, tmp / "dev.log")
                await listening(submission, dev, tmp / "dev.log")
                procs = {"warta dev": dev}
            pids = {name: proc.pid for name, proc in procs.items()}
            if not split:
                pids.update(_dev_children(pids["warta dev"]))
            groups = {name: [pid] for name, pid in pids.items()}
            groups["embedded Redis"] = [_embedded_redis_pid(tmp / "var")]
            await asyncio.sleep(2)  # let the worker connect before the clock starts
            before = cpu_by_group(groups)
            split_before = {name: _user_system(pid) for name, pid in pids.items()}
            profiler = Profiler(tmp, profile)
            for name, pid in pids.items():
                profiler.attach(name.replace(" ", "-"), pid, subprocesses=False)  # each its own
            own_before = time.process_time()
            started_at = time.perf_counter()
            await schedule(sessionmaker, campaign_id)
            if not cron:
                await _start_now(tmp / "var", campaign_id)
            timeline = Timeline(started_at, recipients, tmp / "var" / "maildir" / "new")
            while True:
                await asyncio.sleep(POLL)
                status, counts = await ledger(sessionmaker, campaign_id)
                timeline.observe(status, counts)
                if counts.get("delivered", 0) >= recipients:
                    break
                if any(proc.poll() is not None for proc in procs.values()):
                    raise RuntimeError(f"a Warta process died; see the logs in {tmp}")
                if time.perf_counter() - started_at > TIMEOUT:
                    raise RuntimeError(f"not delivered after {TIMEOUT:.0f} s: {status} {counts}")
            elapsed = time.perf_counter() - started_at
            timeline.print()
            own = time.process_time() - own_before
            print(
                f"  the benchmark's own polling: {own / recipients * 1000:.2f} ms CPU per message"
            )
            after = cpu_by_group(groups)
            for name, pid in pids.items():
                (user0, system0), (user1, system1) = split_before[name], _user_system(pid)
                print(
                    f"  {name}: user {(user1 - user0) / recipients * 1000:.2f} ms, "
                    f"system {(system1 - system0) / recipients * 1000:.2f} ms per message"
                )
            print_profiles(profiler.finish())
            for name, proc in reversed(procs.items()):
                stopping = time.perf_counter()
                stop(proc)
                print(
                    f"  {name} stopped {time.perf_counter() - stopping:.1f} s after SIGTERM, "
                    f"exit code {proc.returncode}"
                )
    finally:
        await engine.dispose()
        _stop_embedded_redis(tmp / "var")
    rate = recipients / elapsed
    mode = "`warta mta` + `warta worker`" if split else "`warta dev`"
    print(f"  {mode}, SQLite, embedded Redis, capture: ledger {counts}")
    print(f"  {recipients:,} recipients in {elapsed:.1f} s = {rate:,.0f} msg/s")
    print(
        "  CPU per message: "
        + ", ".join(f"{g} {(after[g] - before[g]) / recipients * 1000:.2f} ms" for g in groups)
    )
    warta_cpu = sum(after[g] - before[g] for g in pids)
    print(
        f"  CPU per message, the Warta processes together: {warta_cpu / recipients * 1000:.2f} ms"
    )
    return Row(
        f"the embedded defaults (`make run`: {mode}, SQLite, embedded Redis, capture Maildir), "
        f"{recipients:,}-recipient campaign, until the ledger shows all delivered",
        f"≥ {TARGET:,.0f} msg/s",
        f"{rate:,.0f} msg/s",
        "—",
        rate >= TARGET,
        "embedded",
    )


def main(argv: list[str] | None = None) -> list[Row]:
    """Parse arguments and run the campaign once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=RECIPIENTS)
    parser.add_argument("--split", action="store_true", help="warta mta + warta worker")
    parser.add_argument("--quick", action="store_true", help="the same (it is small already)")
    parser.add_argument("--profile", action="store_true", help="record the processes with py-spy")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="WARTA_X=value",
        help="a setting for the Warta processes (repeatable)",
    )
    parser.add_argument(
        "--cron", action="store_true", help="leave the start to the scheduler's cron"
    )
    args = parser.parse_args(argv if argv is not None else [])
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="warta-embedded-bench-"))
    try:
        return [
            asyncio.run(_run(args.recipients, args.split, tmp, args.profile, args.cron, args.set))
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
