"""Bounce handling: reports parsed and classified per second (the test corpus, repeated), and
delivery outcomes written per second through `LedgerOutcomes` on SQLite (delivered only, and
all failed — each failure classified, recorded with evidence and acted on).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.results import Row

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "bounces" / "corpus"
REPLIES = [
    "550 5.1.1 <x@example.com>: Recipient address rejected: User unknown",
    "552 5.2.2 Mailbox full",
    "550 5.7.1 Client host [192.0.2.9] blocked using zen.spamhaus.org",
    "421 4.7.28 unusual rate of unsolicited mail",
]


def parse_rate(seconds: float) -> float:
    """Corpus reports parsed and classified per second, on one core."""
    from app.bounces.classify import classifier
    from app.bounces.parse.report import parse_report

    samples = [path.read_bytes() for path in sorted(CORPUS.glob("*.eml"))]
    rules = classifier()
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for data in samples:
            report = parse_report(data)
            for item in report.recipients:
                rules.classify(item.diagnostic, item.status, permanent=item.failed)
            done += 1
    return done / (time.perf_counter() - started)


async def outcome_rates(directory: Path, rows: int) -> tuple[float, float]:
    """(delivered, failed) outcomes written per second."""
    from app.audience.subscribers import add_confirmed
    from app.bounces.classify import classifier
    from app.bounces.outcomes import Context, LedgerOutcomes
    from app.bounces.service import Policy
    from app.core.database import create_engine, create_sessionmaker
    from app.core.migrate import upgrade_async
    from app.core.settings import Settings
    from app.mail import identity
    from app.models import Campaign, MailingList, Send, SendStatus
    from workers.mta.spool import Envelope

    url = f"sqlite+aiosqlite:///{directory / 'bench.db'}"
    await upgrade_async(url)
    settings = Settings(
        database_url=url,
        var_dir=directory / "var",
        secret_key="bench-" + "x" * 40,
        _env_file=None,  # type: ignore[call-arg]
    )
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session:
        news = MailingList(name="bench")
        session.add(news)
        await session.flush()
        emails = [f"r{n}@example.com" for n in range(2 * rows)]
        ids = await add_confirmed(session, news.id, ((e, "", {}) for e in emails))
        campaign = Campaign(name="bench", subject="s", from_email="news@example.com")
        session.add(campaign)
        await session.flush()
        sends = [
            Send(campaign_id=campaign.id, subscriber_id=i, email=e, status=SendStatus.sent)
            for i, e in zip(ids, emails, strict=True)
        ]
        session.add_all(sends)
        await session.commit()
        send_ids = [send.id for send in sends]
    secret = settings.effective_secret_key()
    sink = LedgerOutcomes(
        sessionmaker, secret, Context(Policy.from_settings(settings), classifier())
    )

    async def run(ids: list[int], outcome: str) -> float:
        started = time.perf_counter()
        for n, row in enumerate(ids):
            envelope = Envelope(
                mail_from=identity.verp_address(
                    secret, row, "bounces.bench", identity.Kind.CAMPAIGN
                ),
                recipients=[emails[0]],
            )
            reply = "250 2.0.0 OK" if outcome == "delivered" else REPLIES[n % len(REPLIES)]
            await sink(envelope.mail_from, emails[0], outcome, reply)
        await sink.flush()
        return len(ids) / (time.perf_counter() - started)

    delivered = await run(send_ids[:rows], "delivered")
    failed = await run(send_ids[rows:], "failed")
    await sink.close()
    await engine.dispose()
    return delivered, failed


def main(argv: list[str] | None = None) -> list[Row]:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rows", type=int, help="default 5000 (quick: 1000)")
    parser.add_argument("--quick", action="store_true", help="1,000 rows")
    args = parser.parse_args(argv if argv is not None else [])
    rows = args.rows or (1000 if args.quick else 5000)
    parsed = parse_rate(args.seconds)
    print(f"parse + classify: {parsed:,.0f} reports/s (corpus, one core)")
    with tempfile.TemporaryDirectory(dir=ROOT / "var" if (ROOT / "var").is_dir() else None) as d:
        delivered, failed = asyncio.run(outcome_rates(Path(d), rows))
    print(f"outcomes, SQLite: {delivered:,.0f} delivered/s, {failed:,.0f} failed/s")
    return [
        Row("bounce reports parsed + classified (test corpus), one core", "—", f"{parsed:,.0f}/s"),
        Row(
            "MTA outcomes written to the ledger, SQLite",
            "—",
            f"{delivered:,.0f} delivered/s; {failed:,.0f} failed/s",
        ),
    ]


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
