"""Transactional API: sustained POST /messages rate, and 202-to-remote-sink latency under a campaign.

Everything runs as it would in production on one machine: PostgreSQL and Redis as real
servers, `warta api` (N processes, the load spread over them as a balancer would),
`warta worker` and `warta mta` as separate processes. The MTA delivers over SMTP to two
"remote" sinks through its transport map: `example.com` (campaign mail and the rate test)
goes to Postfix's `smtp-sink` (`make bench` installs postfix), `tx.example`
(the latency probes) to an aiosmtpd sink in this process that notes when each message
arrived. The load generator is a small keep-alive HTTP/1.1 client on raw asyncio streams,
so it costs the shared CPU little.

1. Rate: `--requests` POST /messages (one recipient each) from `--concurrency` connections;
   the figure is accepted (202) requests / wall time. Then the wait until the worker and the
   MTA have passed every one on (end-to-end messages/s) is reported beside it, and the CPU
   per message (until then) of the API processes, the worker, the MTA, all of PostgreSQL
   and Redis, from /proc.
2. Latency: a campaign of `--campaign` recipients is started; once it is sending, one
   transactional message every 50 ms (`--probes` of them) is posted and the time from its
   202 to its arrival at the tx.example sink is measured: p50, p99, max.

    python -m bench.transactional_bench [--requests 6000] [--concurrency 32]
        [--api-processes 2] [--campaign 50000] [--probes 200] [--quick]
        [--idempotency-keys] [--profile [--profile-dir DIR]]

`--quick`: 1,000 requests, a 5,000-recipient campaign, 60 probes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import postfix
from bench.campaign import stack
from bench.machine import cores
from bench.processes import ROOT, cpu_by_group, free_port, listening, start, warta
from bench.profiling import Profiler, print_profiles
from bench.results import Row

TOKEN = "wk_bench_transactional_0123456789abcdefghij"
RATE_TARGET = 500.0
P99_TARGET = 1.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class _Recorder:
    """aiosmtpd handler that notes the arrival time of each recipient."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.arrivals.setdefault(rcpt, now)
        return "250 2.0.0 OK"


class _Client:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the status and body."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, key: str | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        extra = f"Idempotency-Key: {key}\r\n" if key else ""
        self.writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"{extra}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _message(to: str, index: int) -> bytes:
    return json.dumps(
        {
            "from": "Shop <shop@example.net>",
            "to": to,
            "subject": "Your receipt {{ order }}",
            "html": "<p>Thanks {{ name }}, order {{ order }} is on its way.</p>" * 5,
            "data": {"order": index, "name": f"Customer {index}"},
            "tags": ["receipt"],
        }
    ).encode()


async def _rate(
    ports: list[int], requests: int, concurrency: int, keys: str | None = None
) -> tuple[int, float, list[int]]:
    """POST `requests` messages; with `keys`, each with the Idempotency-Key `{keys}-{index}`."""
    clients = [_Client(ports[i % len(ports)]) for i in range(concurrency)]
    counter = iter(range(requests))
    accepted = 0
    other: list[int] = []

    async def run(client: _Client) -> None:
        nonlocal accepted
        for index in counter:
            status, _ = await client.post(
                "/api/v1/messages",
                _message(f"user{index}@example.com", index),
                f"{keys}-{index}" if keys else None,
            )
            if status == 202:
                accepted += 1
            else:
                other.append(status)

    started = time.perf_counter()
    await asyncio.gather(*(run(client) for client in clients))
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    return accepted, elapsed, other


async def _count(sessionmaker: Any, unsent: bool = False) -> int:
    """Transactional messages in the ledger; with `unsent`, those not yet passed to the MTA."""
    import sqlalchemy as sa

    from app.models import Message
    from app.models.message import SENDABLE_STATUSES

    async with sessionmaker() as session:
        query = sa.select(sa.func.count()).select_from(Message)
        if unsent:
            query = query.where(Message.status.in_(SENDABLE_STATUSES))
        return int(await session.scalar(query) or 0)


async def _handed_over(sessionmaker: Any, probes: dict[str, float]) -> dict[str, float]:
    """When the worker recorded each probe `sent` (the MTA's 250), as a Unix time."""
    import sqlalchemy as sa

    from app.models import Message

    async with sessionmaker() as session:
        rows = await session.execute(
            sa.select(Message.to_email, Message.sent_at).where(Message.to_email.in_(list(probes)))
        )
        return {to: sent.timestamp() for to, sent in rows if sent is not None}


async def _run(args: argparse.Namespace, tmp: Path) -> list[Row]:
    from aiosmtpd.controller import Controller

    recorder = _Recorder()
    probe_port = free_port()
    probe = Controller(recorder, hostname="127.0.0.1", port=probe_port)
    probe.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with postfix.sink(tmp) as fast:
            async with stack(tmp) as st:
                rows = await _measure(args, tmp, st, fast, probe_port, recorder, procs)
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(timeout=30)
                return rows
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        probe.stop()


async def _measure(
    args: argparse.Namespace,
    tmp: Path,
    st: Any,
    fast: postfix.Sink,
    probe_port: int,
    recorder: _Recorder,
    procs: list[subprocess.Popen[bytes]],
) -> list[Row]:
    from app.models.send import OPEN_STATUSES
    from campaigns import lifecycle
    from tests.helpers.seeding import seed_campaign

    submission = free_port()
    api_ports = [free_port() for _ in range(args.api_processes)]
    env = st.env(
        submission,
        WARTA_BOOTSTRAP_API_KEY=TOKEN,
        WARTA_MTA_SPOOL_DIR=str(tmp / "spool"),
        WARTA_DKIM_DIR=str(tmp / "dkim"),
        WARTA_MTA_INBOUND=f"127.0.0.1:{free_port()}",
        WARTA_MTA_DELIVERY="mx",
        WARTA_MTA_TRANSPORT_MAP=json.dumps(
            {"example.com": f"127.0.0.1:{fast.port}", "tx.example": f"127.0.0.1:{probe_port}"}
        ),
        WARTA_API_RATE="0",
        WARTA_WORKER_BATCHES="8",
        WARTA_SENDER_CONNECTIONS="20",
        **dict(item.split("=", 1) for item in args.env),
    )

    def begin(name: str, *cmd: str, **extra: str) -> subprocess.Popen[bytes]:
        proc = start(warta(*cmd), tmp / f"{name}.log", env={**env, **extra}, cwd=tmp)
        procs.append(proc)
        return proc

    mta = begin("mta", "mta")
    await listening(submission, mta, tmp / "mta.log")
    for index, port in enumerate(api_ports):
        api = begin(f"api{index}", "api", WARTA_API_PORT=str(port))
        await listening(port, api, tmp / f"api{index}.log")
    begin("worker", "worker")
    sessionmaker = st.sessionmaker
    await asyncio.sleep(2)

    # 1. sustained accepted requests per second
    keys = "bench" if args.idempotency_keys else None
    await _rate(api_ports, 200, args.concurrency, keys and "warm")  # connections, caches
    groups = {
        "api": [p.pid for p in procs[1:-1]],
        "worker": [procs[-1].pid],
        "mta": [procs[0].pid],
        "PostgreSQL": [st.postgres_pid],
        "Redis": [st.redis_pid],
    }
    cpu_before = cpu_by_group(groups)
    profiler = Profiler(tmp, args.profile)
    for name, pid in [("api", procs[1].pid), ("worker", procs[-1].pid)]:
        profiler.attach(name, pid)
    accepted, elapsed, other = await _rate(api_ports, args.requests, args.concurrency, keys)
    print_profiles(profiler.finish())
    if args.profile_dir:  # the raw collapsed stacks, for a closer look than the top entries
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
        for raw in tmp.glob("profile-*.txt"):
            shutil.copy(raw, Path(args.profile_dir) / raw.name)
    rate = accepted / elapsed
    drain_started = time.perf_counter()
    total = await _count(sessionmaker)
    # Passed on = sent, or already reported delivered by the MTA: nothing queued or deferred.
    while await _count(sessionmaker, unsent=True):
        await asyncio.sleep(0.25)
        if time.perf_counter() - drain_started > 600:
            raise RuntimeError("the worker did not send every message within 10 minutes")
    drained = time.perf_counter() - drain_started
    await asyncio.sleep(1)  # let the MTA pass the last ones to the sink
    cpu_after = cpu_by_group(groups)
    cpu = {role: (cpu_after[role] - cpu_before[role]) / max(accepted, 1) for role in groups}
    print(
        f"  API processes: {args.api_processes}; concurrency {args.concurrency}; sink smtp-sink"
        + ("; every request with its own Idempotency-Key" if keys else "")
    )
    print(
        f"  POST /messages: {accepted:,} accepted in {elapsed:.1f} s = {rate:,.0f}/s "
        f"(target ≥ {RATE_TARGET:,.0f}: {'met' if rate >= RATE_TARGET else 'NOT met'})"
        + (f"; other answers: {sorted(set(other))}" if other else "")
    )
    usable = cores()
    print(
        "  CPU per accepted message (until all were sent): "
        + ", ".join(f"{role} {seconds * 1000:.1f} ms" for role, seconds in cpu.items())
        + f" (total {sum(cpu.values()) * 1000:.1f} ms: at most "
        f"{usable / max(sum(cpu.values()), 1e-9):,.0f}/s on "
        f"{usable} idle cores)"
    )
    print(
        f"  all {total:,} sent to the MTA {drained:.1f} s after the last 202 "
        f"(end to end {total / (elapsed + drained):,.0f} msg/s)"
    )

    # 2. 202-to-sink latency while a campaign sends at full speed
    campaign_id, _ = await seed_campaign(sessionmaker, args.campaign)
    async with sessionmaker() as session:
        await lifecycle.transition(session, campaign_id, "schedule")
        await session.commit()

    async def campaign_sent() -> int:
        """Campaign messages handed to the MTA (sent, or already reported delivered)."""
        async with sessionmaker() as session:
            counts = (await lifecycle.stats(session, campaign_id)).counts
        return sum(n for status, n in counts.items() if status not in OPEN_STATUSES)

    while await campaign_sent() < min(2000, args.campaign // 5):
        await asyncio.sleep(0.2)
    client = _Client(api_ports[0])
    accepted_at: dict[str, float] = {}
    window_start, sent_before = time.perf_counter(), await campaign_sent()
    for index in range(args.probes):
        to = f"probe{index}@tx.example"
        status, body = await client.post("/api/v1/messages", _message(to, index))
        if status != 202:
            raise RuntimeError(f"probe refused: {status} {body[:200]!r}")
        accepted_at[to] = time.time()
        await asyncio.sleep(0.05)
    client.close()
    deadline = time.monotonic() + 60
    while len(recorder.arrivals) < args.probes and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    window = time.perf_counter() - window_start
    campaign_rate = (await campaign_sent() - sent_before) / window
    async with sessionmaker() as session:
        still = await lifecycle.current_status(session, campaign_id)
    latencies = [
        recorder.arrivals[to] - at for to, at in accepted_at.items() if to in recorder.arrivals
    ]
    missing = args.probes - len(latencies)
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    latency_met = p99 < P99_TARGET and not missing
    print(
        f"  campaign of {args.campaign:,} sending at {campaign_rate:,.0f} msg/s during the "
        f"probes (status at the end: {still.value if still else '?'})"
    )
    print(
        f"  202 → remote sink, {len(latencies)} probes: p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms, "
        f"mean {statistics.mean(latencies) * 1000:.0f} ms "
        f"(target p99 < {P99_TARGET:g} s: {'met' if latency_met else 'NOT met'})"
        + (f"; {missing} never arrived" if missing else "")
    )
    handed = await _handed_over(sessionmaker, accepted_at)
    if handed:
        to_mta = [handed[to] - at for to, at in accepted_at.items() if to in handed]
        after = [recorder.arrivals[to] - handed[to] for to in handed if to in recorder.arrivals]
        print(
            f"  of which 202 → handed to the MTA (the worker's sent_at): p50 "
            f"{_percentile(to_mta, 0.5) * 1000:.0f} ms, p99 {_percentile(to_mta, 0.99) * 1000:.0f}"
            f" ms; handed to the MTA → remote sink: p50 {_percentile(after, 0.5) * 1000:.0f} ms,"
            f" p99 {_percentile(after, 0.99) * 1000:.0f} ms"
        )
    stages = ", ".join(f"{role} {seconds * 1000:.1f}" for role, seconds in cpu.items())
    return [
        Row(
            f"`POST /messages` accepted/s, {args.requests:,} requests from "
            f"{args.concurrency} connections, {args.api_processes} `warta api` + worker + MTA "
            "running, PostgreSQL",
            f"≥ {RATE_TARGET:,.0f}/s",
            f"{rate:,.0f}/s (CPU ms per message: {stages})",
            "—",
            rate >= RATE_TARGET and not other,
            "transactional-rate",
        ),
        Row(
            f"transactional 202 → remote sink through the MTA, {len(latencies)} probes while a "
            f"{args.campaign:,}-recipient campaign sends ({campaign_rate:,.0f} msg/s)",
            f"p99 < {P99_TARGET:g} s",
            f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
            + (f"; {missing} never arrived" if missing else ""),
            "—",
            latency_met,
            "transactional-latency",
        ),
    ]


def main(argv: list[str] | None = None) -> list[Row]:
    """Parse arguments and run both measurements once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, help="default 6000 (quick: 1000)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="WARTA_X=VALUE",
        help="a setting for every Warta process (repeatable), e.g. WARTA_DATABASE_PRE_PING=false",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the first API process and the worker with py-spy during the requests",
    )
    parser.add_argument(
        "--idempotency-keys",
        action="store_true",
        help="give every request of the rate test its own Idempotency-Key",
    )
    parser.add_argument(
        "--profile-dir", help="with --profile: keep py-spy's raw collapsed stacks here"
    )
    parser.add_argument("--campaign", type=int, help="default 50000 (quick: 5000)")
    parser.add_argument("--probes", type=int, help="default 200 (quick: 60)")
    parser.add_argument("--quick", action="store_true", help="the smaller sizes")
    args = parser.parse_args(argv if argv is not None else [])
    args.requests = args.requests or (1000 if args.quick else 6000)
    args.campaign = args.campaign or (5000 if args.quick else 50_000)
    args.probes = args.probes or (60 if args.quick else 200)
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="warta-tx-bench-"))
    os.chmod(tmp, 0o755)  # smtp-sink runs unprivileged
    try:
        return asyncio.run(_run(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
