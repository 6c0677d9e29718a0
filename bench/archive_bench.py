"""The message archive: bytes per message (raw vs a re-render snapshot) and its write cost.

1. Sizes. N campaign messages are built by the real composer (the render benchmark's 5 KB
   personalised newsletter, click tracking on, real signed tokens) and archived through
   `app.archive.service.store` in chunks of 100, as a batch does, into PostgreSQL. Raw
   bytes per message = day-file bytes + index bytes (`pg_total_relation_size`) per message.
   The alternative, a byte-identical re-render, needs per message what the render cannot
   derive again: the subscriber as sent (email, name, attributes), the ledger id, the
   Date and the MIME boundary, plus the index row, plus the frozen campaign content once.
   Both are extrapolated to 1,000,000 recipients.
2. Write cost alone: wall time and CPU (this process + PostgreSQL) per archived message.
3. Write cost in a campaign, archive off and on alternating (off, on, off, on, … for
   `--rounds` rounds: the machine is shared, and alternation spreads its noise over both):
   a. the send path in this process: `campaigns.batch.send_batch` over every batch of a
      campaign, 8 batches at a time as a worker runs them, → smtp-sink, PostgreSQL + Redis;
      CPU per message of this process + PostgreSQL from /proc. No worker polling, cron or
      queue runs beside it, so the archive's share is not diluted or blurred by them: this
      is the verdict (target < 5 %).
   b. the campaign end to end (`bench.campaign`, 2 workers → smtp-sink): throughput and
      CPU per message of the workers + PostgreSQL, which on a shared machine move by more
      than 5 % from run to run. With `--mta` the campaign goes through `warta mta` (spool
      with fsync, DKIM) as a real one does, and the CPU is every process's: workers, MTA,
      PostgreSQL and Redis: the archive's share of what a campaign message costs.
   Medians over the rounds; the load average is printed with each leg.

    python -m bench.archive_bench [--quick] [--messages N] [--recipients N] [--mta]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import zstandard

from bench import postfix
from bench.campaign import run_leg, schedule, seed, stack
from bench.processes import ROOT, cpu_by_group
from bench.render_bench import HTML, SUBJECT, TEXT, recipients
from bench.results import Row

TARGET = 0.05
ROUNDS = 3
SEND_PATH_BATCHES = 8  # a worker's WARTA_WORKER_BATCHES in the campaign bench
MESSAGES, QUICK_MESSAGES = 50_000, 5_000
RECIPIENTS, QUICK_RECIPIENTS = 20_000, 5_000
CHUNK = 100
MILLION = 1_000_000


@dataclass(frozen=True)
class Source:
    """The fields compile_campaign reads."""

    id: int
    name: str
    subject: str
    html: str
    text: str


def composer() -> Any:
    """The benchmark newsletter as a campaign ready to build, click tracking on."""
    from app.mail.identity import SiteIdentity
    from app.mail.mime import Address
    from app.mail.rendering import compile_campaign
    from campaigns.composer import PreparedCampaign

    site = SiteIdentity(
        "bench-secret-" + "z" * 40,
        "https://news.example.com",
        "mta.example.com",
        "bounces.example.com",
    )
    return PreparedCampaign(
        campaign_id=42,
        compiled=compile_campaign(Source(42, "Weekly", SUBJECT, HTML, TEXT), track=True),
        sender=Address("news@example.com", "Example News"),
        reply_to=None,
        list_name="Example News Weekly",
        list_id="weekly.news.example.com",
        rate=0.0,
        site=site,
    )


def build_chunk(
    prepared: Any, people: list[Any], first: int, count: int
) -> tuple[list[tuple[int, str, bytes]], list[dict[str, Any]]]:
    """Messages `first`…`first + count - 1` from the composer, and each one's re-render
    snapshot (what the render could not derive again)."""
    from campaigns.composer import Addressee

    built, snapshots = [], []
    for n, person in enumerate(people[first : first + count], start=first):
        view = person.subscriber
        addressee = Addressee(n + 1, view.email, view.name, dict(view.attributes))
        data = prepared.build(1_000_000 + n, addressee)
        built.append((n + 1, view.email, data))
        head = data.split(b"\r\n\r\n", 1)[0]
        boundary = head.split(b'boundary="', 1)[1].split(b'"', 1)[0] if b"boundary" in head else b""
        snapshots.append(
            {
                "send_id": 1_000_000 + n,
                "subscriber_id": n + 1,
                "email": view.email,
                "name": view.name,
                "attributes": dict(view.attributes),
                "date": head.split(b"\r\n", 1)[0].decode()[6:],
                "boundary": boundary.decode(),
            }
        )
    return built, snapshots


async def _sizes(count: int, tmp: Path) -> dict[str, float]:
    from app.archive import service
    from app.archive.service import Built
    from app.core.settings import Settings

    prepared, people = composer(), recipients(count)
    compressor = zstandard.ZstdCompressor(level=3)
    raw_total = snapshot_total = 0
    async with stack(tmp / "sizes") as st:
        settings = Settings(
            database_url=st.database_url,
            var_dir=tmp / "var",
            _env_file=None,  # type: ignore[call-arg]
        )
        groups = {"pg": [st.postgres_pid]}
        wall = own = pg = 0.0
        for first in range(0, count, CHUNK):
            # Built chunk by chunk (as a batch does), and only the store is timed.
            built, snapshots = build_chunk(prepared, people, first, min(CHUNK, count - first))
            raw_total += sum(len(data) for *_, data in built)
            # The re-render's snapshot row: zstd-compressed JSON, as a bytea column would
            # hold it, plus PostgreSQL's ~28 B of row header.
            snapshot_total += sum(
                len(compressor.compress(json.dumps(s).encode())) + 28 for s in snapshots
            )
            items = [Built(data, campaign_id=42, subscriber_id=sid) for sid, _, data in built]
            cpu_before, own_before, started = cpu_by_group(groups), _own_cpu(), time.perf_counter()
            await service.store(st.sessionmaker, settings, items)
            wall += time.perf_counter() - started
            own += _own_cpu() - own_before
            pg += cpu_by_group(groups)["pg"] - cpu_before["pg"]
        files = sum(p.stat().st_size for p in settings.archive_directory().iterdir())
        async with st.sessionmaker() as session:
            await session.execute(sa.text("ANALYZE archived_messages"))
            index = int(
                await session.scalar(sa.text("select pg_total_relation_size('archived_messages')"))
                or 0
            )
            await session.commit()
    content = len(compressor.compress((SUBJECT + HTML + TEXT).encode()))
    return {
        "raw": raw_total / count,
        "file": files / count,
        "index": index / count,
        "snapshot": snapshot_total / count,
        "content": content,
        "wall_us": wall / count * 1e6,
        "cpu_us": (own + pg) / count * 1e6,
    }


def _campaign_cpu(leg: Any) -> float:
    """CPU ms per message of the workers and PostgreSQL (what the archive adds to), and of
    the MTA and Redis when the leg went through `warta mta`."""
    if leg.mta == "warta":
        return sum(leg.ms(group) for group in leg.cpu)
    return sum(leg.ms(group) for group in leg.cpu if group.startswith(("worker", "PostgreSQL")))


def _counted(mta: str) -> str:
    if mta == "warta":
        return "workers + MTA + PostgreSQL + Redis"
    return "workers + PostgreSQL"


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class SendPathLeg:
    """One run of the send path: CPU ms per message and messages per second."""

    own_ms: float
    pg_ms: float
    rate: float
    load: float

    @property
    def ms(self) -> float:
        """This process + PostgreSQL, per message."""
        return self.own_ms + self.pg_ms


async def _send_path(tmp: Path, recipients_count: int, sink: Any, archive: bool) -> SendPathLeg:
    """A campaign of `recipients_count` sent by `send_batch` in this process."""
    import redis.asyncio as aioredis

    from app.core.settings import Settings
    from campaigns import ledger, lifecycle
    from campaigns.batch import send_batch
    from workers.worker import engine_context

    async with stack(tmp) as st:
        environment = st.env(sink.port, WARTA_SENDER_CONNECTIONS="20")
        settings = Settings(
            **{key[6:].lower(): value for key, value in environment.items() if key[:6] == "WARTA_"},
            archive_enabled=archive,
            _env_file=None,  # type: ignore[call-arg]
        )
        campaign_id = await seed(st.sessionmaker, recipients_count)
        await schedule(st.sessionmaker, campaign_id)
        async with st.sessionmaker() as session:
            campaign = await lifecycle.start(session, campaign_id)
            await session.commit()
        assert campaign is not None
        batches = -(-recipients_count // ledger.BATCH_SPAN)
        ranges = [ledger.batch_range(campaign.ledger_base, i) for i in range(batches)]
        redis = aioredis.from_url(st.redis_url)
        try:
            async with engine_context(settings, redis) as ctx:
                gate = asyncio.Semaphore(SEND_PATH_BATCHES)

                async def one(low: int, high: int) -> None:
                    async with gate:
                        report = await send_batch(ctx, campaign_id, low, high)
                        assert not report.stopped, report.stopped

                groups = {"pg": [st.postgres_pid]}
                pg_before, own_before = cpu_by_group(groups)["pg"], _own_cpu()
                started = time.perf_counter()
                await asyncio.gather(*(one(low, high) for low, high in ranges))
                elapsed = time.perf_counter() - started
                own, pg = _own_cpu() - own_before, cpu_by_group(groups)["pg"] - pg_before
        finally:
            await redis.aclose()
    return SendPathLeg(
        own / recipients_count * 1e3,
        pg / recipients_count * 1e3,
        recipients_count / elapsed,
        os.getloadavg()[0],
    )


async def _legs(
    recipients_count: int, rounds: int, tmp: Path, mta: Any = "none"
) -> dict[str, dict[str, list[Any]]]:
    """Send path and end-to-end legs, archive off and on, alternating for `rounds` rounds."""
    legs: dict[str, dict[str, list[Any]]] = {
        "send path": {"off": [], "on": []},
        "end to end": {"off": [], "on": []},
    }
    with postfix.sink(tmp) as sink:
        for n in range(rounds):
            for label, flag in (("off", False), ("on", True)):
                leg = await _send_path(tmp / f"path-{n}-{label}", recipients_count, sink, flag)
                legs["send path"][label].append(leg)
                print(
                    f"  round {n + 1} send path, archive {label}: {leg.ms:.3f} ms CPU/message "
                    f"(this process {leg.own_ms:.3f} + PostgreSQL {leg.pg_ms:.3f}), "
                    f"{leg.rate:,.0f} msg/s, load {leg.load:.1f}",
                    flush=True,
                )
            for label, flag in (("off", "false"), ("on", "true")):
                os.environ["BENCH_ARCHIVE"] = flag
                try:
                    end = await run_leg(tmp / f"e2e-{n}-{label}", recipients_count, 2, sink, mta)
                finally:
                    os.environ.pop("BENCH_ARCHIVE", None)
                legs["end to end"][label].append(end)
                print(
                    f"  round {n + 1} end to end, archive {label}: {end.rate:,.0f} msg/s, "
                    f"{_campaign_cpu(end):.3f} ms CPU/message ({_counted(mta)}), "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    return legs


def main(argv: list[str] | None = None) -> list[Row]:
    """Measure sizes and write cost; print them; the summary rows."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5,000 messages and recipients")
    parser.add_argument(
        "--messages", type=int, help=f"archived for the sizes (default {MESSAGES:,})"
    )
    parser.add_argument("--recipients", type=int, help=f"campaign legs (default {RECIPIENTS:,})")
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"off/on rounds (default {ROUNDS})"
    )
    parser.add_argument(
        "--mta", action="store_true", help="end-to-end legs through `warta mta` (fsync, DKIM)"
    )
    args = parser.parse_args(argv if argv is not None else [])
    count = args.messages or (QUICK_MESSAGES if args.quick else MESSAGES)
    size = args.recipients or (QUICK_RECIPIENTS if args.quick else RECIPIENTS)
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="warta-archive-bench-"))
    os.chmod(tmp, 0o755)  # smtp-sink runs unprivileged
    try:
        sizes = asyncio.run(_sizes(count, tmp))
        stored = sizes["file"] + sizes["index"]
        rerender = sizes["snapshot"] + sizes["index"]
        print(f"  {count:,} campaign messages, {sizes['raw']:,.0f} B each as built")
        print(
            f"  raw, zstd: {sizes['file']:,.0f} B in the day file + {sizes['index']:,.0f} B of "
            f"index = {stored:,.0f} B/message → {stored * MILLION / 1e9:,.2f} GB per 1,000,000"
        )
        print(
            f"  re-render snapshot: {sizes['snapshot']:,.0f} B + the same index = "
            f"{rerender:,.0f} B/message → {rerender * MILLION / 1e9:,.2f} GB per 1,000,000 "
            f"(+ {sizes['content']:,} B of frozen content once)"
        )
        print(
            f"  archive write alone: {sizes['wall_us']:,.0f} µs wall, {sizes['cpu_us']:,.0f} µs "
            "CPU (this process + PostgreSQL) per message, in chunks of 100"
        )
        mta = "warta" if args.mta else "none"
        legs = asyncio.run(_legs(size, args.rounds, tmp, mta))
        path_off = statistics.median(leg.ms for leg in legs["send path"]["off"])
        path_on = statistics.median(leg.ms for leg in legs["send path"]["on"])
        added = path_on / path_off - 1
        e2e_off = statistics.median(_campaign_cpu(leg) for leg in legs["end to end"]["off"])
        e2e_on = statistics.median(_campaign_cpu(leg) for leg in legs["end to end"]["on"])
        rate_off = statistics.median(leg.rate for leg in legs["end to end"]["off"])
        rate_on = statistics.median(leg.rate for leg in legs["end to end"]["on"])
        print(
            f"  archive on vs off, medians of {args.rounds} rounds: send path CPU per message "
            f"{path_off:.3f} → {path_on:.3f} ms, {added:+.1%} (target < {TARGET:.0%}); end to "
            f"end ({_counted(mta)}) CPU per message {e2e_off:.3f} → {e2e_on:.3f} ms ({e2e_on / e2e_off - 1:+.1%}), "
            f"throughput {rate_off:,.0f} → {rate_on:,.0f} msg/s ({rate_on / rate_off - 1:+.1%}; "
            "noisy)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [
        Row(
            f"archive size per campaign message ({sizes['raw']:,.0f} B built), raw zstd vs "
            "re-render snapshot, at 1,000,000 recipients",
            "—",
            f"raw {stored:,.0f} B/msg = {stored * MILLION / 1e9:,.2f} GB; re-render "
            f"{rerender:,.0f} B/msg = {rerender * MILLION / 1e9:,.2f} GB",
        ),
        Row(
            f"archive write cost in a campaign of {size:,} (2 workers → "
            f"{'warta mta → ' if args.mta else ''}smtp-sink)",
            f"< {TARGET:.0%} of throughput",
            f"send path CPU per message {added:+.1%} ({path_off:.3f} → {path_on:.3f} ms); end "
            f"to end {e2e_off:.3f} → {e2e_on:.3f} ms, {rate_off:,.0f} → {rate_on:,.0f} msg/s; "
            f"the write alone {sizes['cpu_us']:,.0f} µs CPU per message",
            "—",
            added < TARGET,
        ),
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
