"""Transactional API: sustained POST /messages rate, and 202-to-remote-sink latency under a campaign.

Everything runs as it would in production on one machine: PostgreSQL and Redis as real
servers, `warta api` (N processes, the load spread over them as a balancer would),
`warta worker` and `warta mta` as separate processes. The MTA delivers over SMTP to two
"remote" sinks through its transport map: `example.com` (campaign mail and the rate test)
goes to Postfix's `smtp-sink` when installed (otherwise an aiosmtpd sink), `tx.example`
(the latency probes) to an aiosmtpd sink in this process that notes when each message
arrived. The load generator is a small keep-alive HTTP/1.1 client on raw asyncio streams,
so it costs the shared CPU little.

1. Rate: `--requests` POST /messages (one recipient each) from `--concurrency` connections;
   the figure is accepted (202) requests / wall time. Then the wait until the worker and the
   MTA have passed every one on (end-to-end messages/s) is reported beside it.
2. Latency: a campaign of `--campaign` recipients is started; once it is sending, one
   transactional message every 50 ms (`--probes` of them) is posted and the time from its
   202 to its arrival at the tx.example sink is measured: p50, p99, max.

    python -m bench.transactional_bench [--requests 6000] [--concurrency 32]
        [--api-processes 2] [--campaign 50000] [--probes 200]
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

ROOT = Path(__file__).resolve().parent.parent
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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fast_sink(port: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    smtp_sink = shutil.which("smtp-sink") or (
        "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None
    )
    out = log.open("wb")
    if smtp_sink:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen(
            [smtp_sink, *user, f"127.0.0.1:{port}", "1000"], stdout=out, stderr=out
        )
        return proc, "smtp-sink"
    code = (
        "from aiosmtpd.controller import Controller\n"
        "class H:\n"
        "    async def handle_DATA(self, s, se, e): return '250 OK'\n"
        f"c=Controller(H(), hostname='127.0.0.1', port={port}); c.start()\n"
        "import signal; signal.sigwait({signal.SIGTERM})\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out), "aiosmtpd"


class _Client:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the status and body."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
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


async def _rate(ports: list[int], requests: int, concurrency: int) -> tuple[int, float, list[int]]:
    clients = [_Client(ports[i % len(ports)]) for i in range(concurrency)]
    counter = iter(range(requests))
    accepted = 0
    other: list[int] = []

    async def run(client: _Client) -> None:
        nonlocal accepted
        for index in counter:
            status, _ = await client.post(
                "/api/v1/messages", _message(f"user{index}@example.com", index)
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


async def _wait_port(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process died; see {log}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"port {port} did not open; see {log}")


async def _count(sessionmaker: Any, status: str | None = None) -> int:
    import sqlalchemy as sa

    from app.models import Message

    async with sessionmaker() as session:
        query = sa.select(sa.func.count()).select_from(Message)
        if status is not None:
            query = query.where(Message.status == status)
        return int(await session.scalar(query) or 0)


async def _run(args: argparse.Namespace, tmp: Path) -> None:
    from aiosmtpd.controller import Controller

    from app.core.database import create_engine, create_sessionmaker
    from app.core.migrate import upgrade_async
    from app.core.settings import Settings
    from campaigns import lifecycle
    from tests.helpers.seeding import seed_campaign
    from tests.helpers.servers import PostgresServer, RedisServer, free_port

    fast_port, probe_port = free_port(), free_port()
    fast, fast_kind = _fast_sink(fast_port, tmp / "sink.log")
    recorder = _Recorder()
    probe = Controller(recorder, hostname="127.0.0.1", port=probe_port)
    probe.start()
    procs: list[subprocess.Popen[bytes]] = []
    warta = str(Path(sys.executable).parent / "warta")
    try:
        with PostgresServer() as pg, RedisServer() as redis:
            url = pg.create_database("bench_tx")
            await upgrade_async(url)
            submission = free_port()
            api_ports = [free_port() for _ in range(args.api_processes)]
            env = {k: v for k, v in os.environ.items() if not k.startswith("WARTA_")}
            env.update(
                WARTA_DATABASE_URL=url,
                WARTA_REDIS_URL=redis.url,
                WARTA_SECRET_KEY="bench-secret-" + "t" * 40,
                WARTA_BOOTSTRAP_API_KEY=TOKEN,
                WARTA_VAR_DIR=str(tmp / "var"),
                WARTA_MTA_SPOOL_DIR=str(tmp / "spool"),
                WARTA_DKIM_DIR=str(tmp / "dkim"),
                WARTA_MTA_SUBMISSION=f"127.0.0.1:{submission}",
                WARTA_MTA_INBOUND=f"127.0.0.1:{free_port()}",
                WARTA_MTA_DELIVERY="mx",
                WARTA_MTA_TRANSPORT_MAP=json.dumps(
                    {
                        "example.com": f"127.0.0.1:{fast_port}",
                        "tx.example": f"127.0.0.1:{probe_port}",
                    }
                ),
                WARTA_MTA_HOSTNAME="bench.example.com",
                WARTA_API_RATE="0",
                WARTA_WORKER_BATCHES="8",
                WARTA_SENDER_CONNECTIONS="20",
            )

            def start(name: str, *cmd: str, **extra: str) -> subprocess.Popen[bytes]:
                log = tmp / f"{name}.log"
                proc = subprocess.Popen(
                    [warta, *cmd], env={**env, **extra}, cwd=tmp,
                    stdout=log.open("wb"), stderr=subprocess.STDOUT,
                )  # fmt: skip
                procs.append(proc)
                return proc

            mta = start("mta", "mta")
            await _wait_port(submission, mta, tmp / "mta.log")
            for index, port in enumerate(api_ports):
                api = start(f"api{index}", "api", WARTA_API_PORT=str(port))
                await _wait_port(port, api, tmp / f"api{index}.log")
            start("worker", "worker")
            engine = create_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
            sessionmaker = create_sessionmaker(engine)
            await asyncio.sleep(2)

            # 1. sustained accepted requests per second
            await _rate(api_ports, 200, args.concurrency)  # warm-up: connections, caches
            roles = {"api": procs[1:-1], "worker": [procs[-1]], "mta": [procs[0]]}
            cpu_before = {r: sum(_cpu_seconds(p.pid) for p in ps) for r, ps in roles.items()}
            accepted, elapsed, other = await _rate(api_ports, args.requests, args.concurrency)
            rate = accepted / elapsed
            drain_started = time.perf_counter()
            total = await _count(sessionmaker)
            while await _count(sessionmaker, "sent") < total:
                await asyncio.sleep(0.25)
                if time.perf_counter() - drain_started > 600:
                    raise RuntimeError("the worker did not send every message within 10 minutes")
            drained = time.perf_counter() - drain_started
            await asyncio.sleep(1)  # let the MTA pass the last ones to the sink
            cpu = {
                role: (sum(_cpu_seconds(p.pid) for p in ps) - cpu_before[role]) / max(accepted, 1)
                for role, ps in roles.items()
            }
            print(
                f"  API processes: {args.api_processes}; concurrency {args.concurrency}; sink {fast_kind}"
            )
            print(
                f"  POST /messages: {accepted:,} accepted in {elapsed:.1f} s = {rate:,.0f}/s "
                f"(target ≥ {RATE_TARGET:,.0f}: {'met' if rate >= RATE_TARGET else 'NOT met'})"
                + (f"; other answers: {sorted(set(other))}" if other else "")
            )
            print(
                "  CPU per accepted message: "
                + ", ".join(f"{role} {seconds * 1000:.1f} ms" for role, seconds in cpu.items())
                + f" (total {sum(cpu.values()) * 1000:.1f} ms: at most "
                f"{(os.cpu_count() or 1) / max(sum(cpu.values()), 1e-9):,.0f}/s on "
                f"{os.cpu_count()} idle cores)"
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
                async with sessionmaker() as session:
                    return (await lifecycle.stats(session, campaign_id)).counts.get("sent", 0)

            while await campaign_sent() < 2000:
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
                recorder.arrivals[to] - at
                for to, at in accepted_at.items()
                if to in recorder.arrivals
            ]
            missing = args.probes - len(latencies)
            p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
            print(
                f"  campaign of {args.campaign:,} sending at {campaign_rate:,.0f} msg/s during the "
                f"probes (status at the end: {still.value if still else '?'})"
            )
            print(
                f"  202 → remote sink, {len(latencies)} probes: p50 {p50 * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms, "
                f"mean {statistics.mean(latencies) * 1000:.0f} ms "
                f"(target p99 < {P99_TARGET:g} s: {'met' if p99 < P99_TARGET and not missing else 'NOT met'})"
                + (f"; {missing} never arrived" if missing else "")
            )
            await engine.dispose()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        probe.stop()
        fast.terminate()
        fast.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run both measurements once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--campaign", type=int, default=50_000)
    parser.add_argument("--probes", type=int, default=200)
    args = parser.parse_args(argv if argv is not None else [])
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="warta-tx-bench-") as tmp:
        asyncio.run(_run(args, Path(tmp)))


if __name__ == "__main__":
    main(sys.argv[1:])
