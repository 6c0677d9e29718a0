"""One campaign run end to end, shared by the campaign, pipeline and resume benchmarks.

A run ("leg") gets its own PostgreSQL and Redis servers (the test suite's throwaway servers:
fsync off, as in every earlier campaign figure), seeds a list and a campaign, starts
`warta worker` processes and the MTA they submit to — `warta mta` (spool with fsync, DKIM
RSA-2048), a private Postfix (unsigned), or none (the workers submit to the sink) — and
schedules the campaign. The clock starts at the schedule; the leg is done when the ledger
shows every recipient delivered (`warta mta`), when the sink has counted every message
(Postfix), or when the campaign is finished (no MTA). Over the run it accounts the CPU of
every process from /proc and samples the workers' and the MTA's peak RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from bench import postfix
from bench.postfix import Sink
from bench.processes import (
    cpu_by_group,
    free_port,
    listening,
    logged,
    parent_pid,
    process,
    tree_vm_hwm_mb,
    warta,
)
from bench.profiling import Profile, Profiler

MtaKind = Literal["warta", "postfix", "none"]
SECRET = "bench-secret-" + "z" * 40
POLL = 0.1
WORKER_READY = "worker ready"
"""What `warta worker` logs once it takes jobs."""
LEDGER_POLL = 0.5
HTML = (
    "<html><body><h1>Hello {{ subscriber.name }}</h1>"
    + "<p>Our monthly newsletter, {{ subscriber.attributes.city | default('friend') }}. "
    + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " * 50
    + "</p><a href='{{ unsubscribe_url }}'>Unsubscribe</a></body></html>"
)
TEXT = (
    "Hello {{ subscriber.name }}\n\nOur monthly newsletter, "
    "{{ subscriber.attributes.city | default('friend') }}.\n\n"
    + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n" * 25
    + "\nUnsubscribe: {{ unsubscribe_url }}\n"
)


@dataclass
class Stack:
    """PostgreSQL, Redis and a migrated database for one leg."""

    database_url: str
    redis_url: str
    sessionmaker: Any
    postgres_pid: int
    redis_pid: int
    tmp: Path

    def env(self, submission: int, **extra: str) -> dict[str, str]:
        """The environment of a Warta process of this leg (none of the caller's WARTA_*)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("WARTA_")}
        env.update(
            WARTA_DATABASE_URL=self.database_url,
            WARTA_REDIS_URL=self.redis_url,
            WARTA_MTA_SUBMISSION=f"127.0.0.1:{submission}",
            WARTA_SECRET_KEY=SECRET,
            WARTA_VAR_DIR=str(self.tmp / "var"),
            WARTA_MTA_HOSTNAME="bench.example.com",
        )
        env.update(extra)
        return env


STATEMENTS_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.max": "2000",
}
"""PostgreSQL settings that make `pg_stat_statements` count every statement (also those run
inside functions and triggers)."""
TOP_STATEMENTS = 25


@dataclass(frozen=True)
class Statement:
    """One normalised statement's share of a run, from `pg_stat_statements`."""

    query: str
    calls: int
    total_ms: float
    rows: int


@contextlib.asynccontextmanager
async def stack(tmp: Path, *, statements: bool = False) -> AsyncIterator[Stack]:
    """Start PostgreSQL and Redis, migrate; stop both when the block ends.

    With `statements`, PostgreSQL loads `pg_stat_statements` (see `top_statements`).
    """
    import redis
    import sqlalchemy as sa

    from app.core.database import create_engine, create_sessionmaker
    from app.core.migrate import upgrade_async
    from app.core.settings import Settings
    from tests.helpers.servers import PostgresServer, RedisServer

    tmp.mkdir(parents=True, exist_ok=True)
    with (
        PostgresServer(STATEMENTS_SETTINGS if statements else None) as pg,
        RedisServer() as redis_server,
    ):
        url = pg.create_database("bench")
        await upgrade_async(url)
        engine = create_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
        sessionmaker = create_sessionmaker(engine)
        try:
            async with sessionmaker() as session:
                backend = int(await session.scalar(sa.text("select pg_backend_pid()")) or 0)
                if statements:
                    await session.execute(sa.text("create extension pg_stat_statements"))
                    await session.commit()
            client = redis.Redis.from_url(redis_server.url)
            redis_pid = int(cast(dict[str, Any], client.info("server"))["process_id"])
            client.close()
            yield Stack(
                url, redis_server.url, sessionmaker, parent_pid(backend) or 0, redis_pid, tmp
            )
        finally:
            await engine.dispose()


async def seed(sessionmaker: Any, recipients: int) -> int:
    """A list of `recipients` subscribers @example.com and a draft campaign to it; its id."""
    from tests.helpers.seeding import seed_campaign

    started = time.perf_counter()
    campaign_id, _ = await seed_campaign(sessionmaker, recipients, html=HTML, text=TEXT)
    print(f"  seeded {recipients:,} subscribers in {time.perf_counter() - started:.1f} s")
    return campaign_id


async def schedule(sessionmaker: Any, campaign_id: int) -> None:
    """Schedule the campaign now (the worker's cron starts it within a second)."""
    from campaigns import lifecycle

    async with sessionmaker() as session:
        await lifecycle.transition(session, campaign_id, "schedule")
        await session.commit()


async def ledger(sessionmaker: Any, campaign_id: int) -> tuple[str, dict[str, int]]:
    """The campaign's status and its ledger rows per status (no send rate: its query cost
    PostgreSQL as much again, counted in PostgreSQL's CPU)."""
    from campaigns import lifecycle
    from campaigns.ledger import status_counts

    async with sessionmaker() as session:
        status = await lifecycle.current_status(session, campaign_id)
        counts = await status_counts(session, campaign_id)
    return (status.value if status else "?"), counts


async def reset_statements(sessionmaker: Any) -> None:
    """Forget what `pg_stat_statements` counted so far (the seeding, the migrations)."""
    import sqlalchemy as sa

    async with sessionmaker() as session:
        await session.execute(sa.text("select pg_stat_statements_reset()"))


async def top_statements(sessionmaker: Any, limit: int = TOP_STATEMENTS) -> list[Statement]:
    """The statements of every database by total execution time, most first, then those of
    the most calls not among them (round trips); the last entry ("(all statements)") sums
    every statement counted."""
    import sqlalchemy as sa

    async with sessionmaker() as session:
        rows = (
            await session.execute(
                sa.text(
                    "(select query, calls, total_exec_time, rows from pg_stat_statements "
                    "order by total_exec_time desc limit :limit) union "
                    "(select query, calls, total_exec_time, rows from pg_stat_statements "
                    "order by calls desc limit :by_calls) "
                    "order by total_exec_time desc"
                ),
                {"limit": limit, "by_calls": limit // 3},
            )
        ).all()
        total = (
            await session.execute(
                sa.text(
                    "select coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0), "
                    "coalesce(sum(rows), 0) from pg_stat_statements"
                )
            )
        ).one()
    top = [Statement(str(q), int(c), float(t), int(r)) for q, c, t, r in rows]
    return [*top, Statement("(all statements)", int(total[0]), float(total[1]), int(total[2]))]


def start_mta(stack: Stack, submission: int, next_hop: int, log: Path) -> Any:
    """`warta mta` on `submission`, signing for example.com, delivering it to `next_hop`."""
    from app.mail.dkim import generate_key

    generate_key(stack.tmp / "dkim", postfix.DOMAIN, "bench")
    env = stack.env(
        submission,
        WARTA_MTA_INBOUND=f"127.0.0.1:{free_port()}",
        WARTA_MTA_DELIVERY="mx",
        WARTA_MTA_TRANSPORT_MAP=json.dumps({postfix.DOMAIN: f"127.0.0.1:{next_hop}"}),
        WARTA_MTA_SPOOL_DIR=str(stack.tmp / "spool"),
        WARTA_DKIM_DIR=str(stack.tmp / "dkim"),
        WARTA_MTA_PROCESSES=os.environ.get("BENCH_MTA_PROCESSES", "1"),
    )
    return process(warta("mta"), log, env=env)


def worker_env(stack: Stack, submission: int) -> dict[str, str]:
    """A bench worker's environment: 8 batches and 20 connections unless BENCH_* say else."""
    return stack.env(
        submission,
        WARTA_WORKER_BATCHES=os.environ.get("BENCH_BATCHES", "8"),
        WARTA_SENDER_CONNECTIONS=os.environ.get("BENCH_CONNECTIONS", "20"),
        WARTA_ARCHIVE_ENABLED=os.environ.get("BENCH_ARCHIVE", "true"),
        # The MTA's keys (written by start_mta; none in the Postfix leg): as in a deployment,
        # where every process reads the same settings, the workers sign what they build.
        WARTA_DKIM_DIR=str(stack.tmp / "dkim"),
    )


@dataclass
class Leg:
    """What one campaign run measured."""

    mta: MtaKind
    recipients: int
    elapsed: float
    """Schedule → done (see the module docstring)."""
    at_sink: float | None
    """Schedule → the sink has counted every message."""
    handed_over: float | None
    """Schedule → the campaign finished (every message accepted by the MTA or the sink)."""
    counts: dict[str, int]
    cpu: dict[str, float]
    """CPU seconds per process group over the run."""
    driver_cpu: float
    """This benchmark process's own CPU over the run (not counted in any total)."""
    rss_early: dict[str, float] = field(default_factory=dict)
    """VmHWM (MB) of the workers and the MTA once 10 % had reached the sink."""
    rss_end: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    statements: list[Statement] = field(default_factory=list)
    """The top statements by total time over the run (with `statements=True`)."""

    @property
    def rate(self) -> float:
        """Recipients per second, schedule → done."""
        return self.recipients / self.elapsed

    def ms(self, group: str) -> float:
        """CPU ms per message of one group."""
        return self.cpu.get(group, 0.0) / self.recipients * 1000


def _driver_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def run_leg(
    tmp: Path,
    recipients: int,
    workers: int,
    sink: Sink,
    mta: MtaKind,
    *,
    profile: bool = False,
    statements: bool = False,
    timeout: float = 3600,
) -> Leg:
    """Seed, start the processes, schedule, wait until done; stop everything again.

    With `statements`, the leg also keeps PostgreSQL's top statements over the run.
    """
    async with stack(tmp, statements=statements) as st:
        campaign_id = await seed(st.sessionmaker, recipients)
        with contextlib.ExitStack() as started:
            groups: dict[str, list[int]] = {}
            mta_proc: subprocess.Popen[bytes] | None = None
            if mta == "warta":
                submission = free_port()
                mta_proc = started.enter_context(
                    start_mta(st, submission, sink.port, tmp / "mta.log")
                )
                await listening(submission, mta_proc, tmp / "mta.log")
                groups["warta mta"] = [mta_proc.pid]
            elif mta == "postfix":
                instance = started.enter_context(postfix.instance(tmp / "postfix", sink.port))
                submission = instance.port
                groups["Postfix (all processes)"] = [instance.master_pid]
            else:
                submission = sink.port
            procs = [
                started.enter_context(
                    process(warta("worker"), tmp / f"worker{i}.log", env=worker_env(st, submission))
                )
                for i in range(workers)
            ]
            for i, proc in enumerate(procs):
                groups[f"worker {i + 1}"] = [proc.pid]
            groups["PostgreSQL (all backends)"] = [st.postgres_pid]
            groups["Redis"] = [st.redis_pid]
            groups["smtp-sink"] = [sink.pid]
            profiler = Profiler(tmp, profile)
            watched = {f"worker {i + 1}": p.pid for i, p in enumerate(procs)}
            if mta_proc is not None:
                watched["warta mta"] = mta_proc.pid
            for i, proc in enumerate(procs):
                await logged(WORKER_READY, proc, tmp / f"worker{i}.log")
            for name, pid in watched.items():
                profiler.attach(name, pid)
            await asyncio.sleep(1)  # let the workers poll their queues before the clock starts
            alive = [*procs, *([mta_proc] if mta_proc is not None else [])]
            if statements:
                await reset_statements(st.sessionmaker)
            leg = await _measure(
                st, campaign_id, recipients, sink, mta, groups, watched, alive, timeout
            )
            leg.profiles = profiler.finish()
            if statements:
                leg.statements = await top_statements(st.sessionmaker)
        return leg


async def _measure(
    st: Stack,
    campaign_id: int,
    recipients: int,
    sink: Sink,
    mta: MtaKind,
    groups: dict[str, list[int]],
    watched: dict[str, int],
    procs: list[subprocess.Popen[bytes]],
    timeout: float,
) -> Leg:
    before_sink = sink.accepted
    cpu_before, driver_before = cpu_by_group(groups), _driver_cpu()
    started = time.perf_counter()
    await schedule(st.sessionmaker, campaign_id)
    clock: Callable[[], float] = lambda: time.perf_counter() - started  # noqa: E731
    at_sink = handed_over = None
    rss_early: dict[str, float] = {}
    status, counts = "?", dict[str, int]()
    next_ledger = 0.0
    while True:
        await asyncio.sleep(POLL)
        arrived = sink.accepted - before_sink
        if not rss_early and arrived >= recipients / 10:
            rss_early = {name: tree_vm_hwm_mb(pid) for name, pid in watched.items()}
        if at_sink is None and arrived >= recipients:
            at_sink = clock()
        if mta == "postfix" and at_sink is not None:
            break
        # The ledger query costs PostgreSQL CPU: ask twice a second, and often only at the end.
        if clock() >= next_ledger or at_sink is not None:
            next_ledger = clock() + LEDGER_POLL
            status, counts = await ledger(st.sessionmaker, campaign_id)
            if handed_over is None and status == "finished":
                handed_over = clock()
            if mta == "none" and handed_over is not None:
                break
            if mta == "warta" and counts.get("delivered", 0) >= recipients:
                break
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a Warta process died; see its log in {st.tmp}")
        if clock() > timeout:
            raise RuntimeError(f"not done after {timeout:.0f} s: {status} {counts}")
    elapsed = clock()
    cpu_after, driver_after = cpu_by_group(groups), _driver_cpu()
    rss_end = {name: tree_vm_hwm_mb(pid) for name, pid in watched.items()}
    status, counts = await ledger(st.sessionmaker, campaign_id)
    return Leg(
        mta=mta,
        recipients=recipients,
        elapsed=elapsed,
        at_sink=at_sink,
        handed_over=handed_over,
        counts=counts,
        cpu={name: cpu_after[name] - cpu_before[name] for name in groups},
        driver_cpu=driver_after - driver_before,
        rss_early=rss_early,
        rss_end=rss_end,
    )
