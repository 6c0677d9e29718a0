"""End to end: a campaign from schedule to the last message accepted by a fast SMTP sink.

PostgreSQL and Redis run as real servers; `warta worker` runs as separate processes (one
per core by default); the sink is Postfix's `smtp-sink` (C) when installed, otherwise an
aiosmtpd sink in its own process. The figure is recipients / (last accepted - schedule).
Peak RSS per worker (VmHWM) shows whether memory stays flat as the campaign grows.

    python -m bench.campaign_bench --recipients 100000 [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1500.0
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


def _sink(port: int, log: Path) -> subprocess.Popen[bytes]:
    smtp_sink = shutil.which("smtp-sink") or (
        "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None
    )
    out = log.open("wb")
    if smtp_sink:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        return subprocess.Popen(
            [smtp_sink, *user, f"127.0.0.1:{port}", "1000"], stdout=out, stderr=out
        )
    code = (
        "import asyncio,sys\n"
        "from aiosmtpd.controller import Controller\n"
        "class H:\n"
        "    async def handle_DATA(self, s, se, e): return '250 OK'\n"
        f"c=Controller(H(), hostname='127.0.0.1', port={port}); c.start()\n"
        "import signal; signal.sigwait({signal.SIGTERM})\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out)


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def _run(recipients: int, workers: int, tmp: Path) -> None:
    from app.migrate import upgrade_async
    from app.settings import Settings
    from tests.servers import PostgresServer, RedisServer, free_port
    from tests.workers.processes import worker_env
    from tests.workers.seeding import seed_campaign

    sink_port = free_port()
    sink = _sink(sink_port, tmp / "sink.log")
    with PostgresServer() as pg, RedisServer() as redis:
        url = pg.create_database("bench")
        await upgrade_async(url)
        settings = Settings(
            database_url=url,
            redis_url=redis.url,
            mta_submission=f"127.0.0.1:{sink_port}",
            secret_key="bench-secret-" + "z" * 40,
            var_dir=tmp / "var",
            mta_hostname="bench.example.com",
            _env_file=None,  # type: ignore[call-arg]
        )
        from app.database import create_engine, create_sessionmaker
        from app.services import lifecycle

        engine = create_engine(settings)
        sessionmaker = create_sessionmaker(engine)
        seeded = time.perf_counter()
        campaign_id, _ = await seed_campaign(sessionmaker, recipients, html=HTML, text=TEXT)
        print(f"  seeded {recipients:,} subscribers in {time.perf_counter() - seeded:.1f} s")
        env = worker_env(settings)
        procs = [
            subprocess.Popen(
                [str(Path(sys.executable).parent / "warta"), "worker"],
                env={
                    **env,
                    "WARTA_WORKER_BATCHES": os.environ.get("BENCH_BATCHES", "8"),
                    "WARTA_SENDER_CONNECTIONS": os.environ.get("BENCH_CONNECTIONS", "20"),
                },
                stdout=(tmp / f"worker{i}.log").open("wb"),
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            for i in range(workers)
        ]
        await asyncio.sleep(2)  # let the workers connect before the clock starts
        started = time.perf_counter()
        async with sessionmaker() as session:
            await lifecycle.transition(session, campaign_id, "schedule")
            await session.commit()
        peak = [0.0] * workers
        while True:
            await asyncio.sleep(0.5)
            peak = [max(p, _vm_hwm_mb(proc.pid)) for p, proc in zip(peak, procs, strict=True)]
            async with sessionmaker() as session:
                status = await lifecycle.current_status(session, campaign_id)
            if status is not None and status.value == "finished":
                break
            if any(proc.poll() is not None for proc in procs):
                raise RuntimeError("a worker died; see its log in " + str(tmp))
        elapsed = time.perf_counter() - started
        async with sessionmaker() as session:
            stats = await lifecycle.stats(session, campaign_id)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        await engine.dispose()
    sink.terminate()
    sink.wait(timeout=10)
    rate = recipients / elapsed
    verdict = "met" if rate >= TARGET else "NOT met"
    print(
        f"  sink: {'smtp-sink' if shutil.which('smtp-sink') or Path('/usr/sbin/smtp-sink').exists() else 'aiosmtpd'}; workers: {workers}"
    )
    print(f"  ledger: {stats.counts}")
    print(
        f"  {recipients:,} recipients in {elapsed:.1f} s = {rate:,.0f} msg/s (target ≥ {TARGET:,.0f}: {verdict})"
    )
    print(f"  worker peak RSS (VmHWM): {', '.join(f'{p:.0f} MB' for p in peak)}")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the benchmark once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv if argv is not None else [])
    import tempfile

    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="warta-bench-") as tmp:
        asyncio.run(_run(args.recipients, args.workers, Path(tmp)))


if __name__ == "__main__":
    main(sys.argv[1:])
