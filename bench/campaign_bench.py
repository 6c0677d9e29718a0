"""End to end: a campaign from schedule to the last message accepted by a fast SMTP sink.

PostgreSQL and Redis run as real servers; `warta worker` runs as separate processes (one
per core by default); the sink is Postfix's `smtp-sink` (C) when installed, otherwise an
aiosmtpd sink in its own process. The figure is recipients / (last accepted - schedule).
Peak RSS per worker (VmHWM) shows whether memory stays flat as the campaign grows.

With `--mta`, the workers submit to a `warta mta` process that spools every message,
signs it with DKIM (RSA-2048) and delivers it to the sink through the transport map; the
campaign counts as done when the MTA has reported every message delivered to the ledger.

    python -m bench.campaign_bench --recipients 100000 [--workers 2] [--mta]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1500.0  # straight to the sink
TARGET_MTA = 1000.0  # through warta mta with DKIM, until the ledger says delivered
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


def _mta(settings: object, sink_port: int, tmp: Path) -> subprocess.Popen[bytes]:
    """`warta mta` delivering example.com to the sink, signing for example.com."""
    from app.core.settings import Settings
    from tests.helpers.processes import worker_env
    from tests.helpers.servers import free_port
    from workers.mta.dkim import generate_key

    assert isinstance(settings, Settings)
    generate_key(tmp / "dkim", "example.com", "bench")
    env = {
        **worker_env(settings),
        "WARTA_MTA_INBOUND": f"127.0.0.1:{free_port()}",
        "WARTA_MTA_DELIVERY": "mx",
        "WARTA_MTA_TRANSPORT_MAP": json.dumps({"example.com": f"127.0.0.1:{sink_port}"}),
        "WARTA_MTA_SPOOL_DIR": str(tmp / "spool"),
        "WARTA_DKIM_DIR": str(tmp / "dkim"),
        "WARTA_MTA_PROCESSES": os.environ.get("BENCH_MTA_PROCESSES", "1"),
    }
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "warta"), "mta"],
        env=env,
        stdout=(tmp / "mta.log").open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


async def _listening(address: str, timeout: float = 30) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {address}") from None
            await asyncio.sleep(0.1)
        else:
            writer.close()
            await writer.wait_closed()
            return


async def _run(recipients: int, workers: int, tmp: Path, through_mta: bool = False) -> None:
    from app.core.migrate import upgrade_async
    from app.core.settings import Settings
    from tests.helpers.processes import worker_env
    from tests.helpers.seeding import seed_campaign
    from tests.helpers.servers import PostgresServer, RedisServer, free_port

    sink_port = free_port()
    sink = _sink(sink_port, tmp / "sink.log")
    with PostgresServer() as pg, RedisServer() as redis:
        url = pg.create_database("bench")
        await upgrade_async(url)
        submission = f"127.0.0.1:{free_port() if through_mta else sink_port}"
        settings = Settings(
            database_url=url,
            redis_url=redis.url,
            mta_submission=submission,
            secret_key="bench-secret-" + "z" * 40,
            var_dir=tmp / "var",
            mta_hostname="bench.example.com",
            _env_file=None,  # type: ignore[call-arg]
        )
        from app.core.database import create_engine, create_sessionmaker
        from campaigns import lifecycle

        engine = create_engine(settings)
        sessionmaker = create_sessionmaker(engine)
        seeded = time.perf_counter()
        campaign_id, _ = await seed_campaign(sessionmaker, recipients, html=HTML, text=TEXT)
        print(f"  seeded {recipients:,} subscribers in {time.perf_counter() - seeded:.1f} s")
        env = worker_env(settings)
        mta = _mta(settings, sink_port, tmp) if through_mta else None
        if mta is not None:
            await _listening(submission)
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
        submitted: float | None = None
        while True:
            await asyncio.sleep(0.5)
            peak = [max(p, _vm_hwm_mb(proc.pid)) for p, proc in zip(peak, procs, strict=True)]
            async with sessionmaker() as session:
                status = await lifecycle.current_status(session, campaign_id)
                counts = (await lifecycle.stats(session, campaign_id)).counts
            if status is not None and status.value == "finished":
                submitted = submitted or time.perf_counter() - started
                if mta is None or counts.get("delivered", 0) >= recipients:
                    break
            if any(proc.poll() is not None for proc in [*procs, *([mta] if mta else [])]):
                raise RuntimeError("a process died; see its log in " + str(tmp))
        elapsed = time.perf_counter() - started
        async with sessionmaker() as session:
            stats = await lifecycle.stats(session, campaign_id)
        everything = [*procs, *([mta] if mta else [])]
        for proc in everything:
            proc.terminate()
        for proc in everything:
            proc.wait(timeout=60)
        await engine.dispose()
    sink.terminate()
    sink.wait(timeout=10)
    rate = recipients / elapsed
    target = TARGET_MTA if through_mta else TARGET
    verdict = "met" if rate >= target else "NOT met"
    print(
        f"  sink: {'smtp-sink' if shutil.which('smtp-sink') or Path('/usr/sbin/smtp-sink').exists() else 'aiosmtpd'}; workers: {workers}"
    )
    print(f"  ledger: {stats.counts}")
    if mta is not None:
        print(
            f"  through warta mta with DKIM: all accepted by the MTA after {submitted:.1f} s"
            f" ({recipients / (submitted or elapsed):,.0f} msg/s), all delivered after"
            f" {elapsed:.1f} s"
        )
    print(
        f"  {recipients:,} recipients in {elapsed:.1f} s = {rate:,.0f} msg/s (target ≥ {target:,.0f}: {verdict})"
    )
    print(f"  worker peak RSS (VmHWM): {', '.join(f'{p:.0f} MB' for p in peak)}")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the benchmark once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--mta", action="store_true", help="submit through `warta mta`")
    args = parser.parse_args(argv if argv is not None else [])
    import tempfile

    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="warta-bench-") as tmp:
        asyncio.run(_run(args.recipients, args.workers, Path(tmp), args.mta))


if __name__ == "__main__":
    main(sys.argv[1:])
