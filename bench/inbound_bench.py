"""Inbound replies stored and scanned per second (target ≥ 200/s without spamd, clamd
included): DKIM-signed replies written to the replies Maildir as the MTA writes them, then
the reply processor parses, attributes, checks SPF/DKIM/DMARC against a DNS server on
127.0.0.1, scans with a real clamd (test signature database) and stores them in SQLite.

    python -m bench.inbound_bench [--quick] [--messages N] [--no-clamd]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import tempfile
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from bench.results import Row

ROOT = Path(__file__).resolve().parent.parent
TARGET = 200.0


def _key() -> tuple[bytes, str]:
    """A DKIM key for the sending domain: (private PEM, TXT record)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


def _reply(to: str, n: int, pem: bytes) -> bytes:
    import dkim

    message = EmailMessage()
    message["From"] = f"Reader {n} <reader{n}@reader.example>"
    message["To"] = to
    message["Subject"] = "Re: Hello"
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain="reader.example")
    message.set_content(f"Thanks for issue {n}; the article on page two was good.\n" * 5)
    message.add_alternative(f"<p>Thanks for issue {n}.</p>" * 5, subtype="html")
    data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    return bytes(dkim.sign(data, b"sel", b"reader.example", pem)) + data


async def measure(directory: Path, messages: int, clamd: str) -> tuple[float, float]:
    """(replies stored and scanned per second by one reply processor, its CPU seconds per
    reply; the DNS server thread included, clamd not)."""
    from app.audience.subscribers import add_confirmed
    from app.core.database import create_engine, create_sessionmaker
    from app.core.migrate import upgrade_async
    from app.core.resolver import make_resolver
    from app.core.settings import Settings
    from app.inbound.authentication import Authenticator
    from app.inbound.processor import ReplyProcessor
    from app.inbound.scanning import DaemonScanner
    from app.inbound.service import Policy
    from app.mail.reply_address import ReplyTarget, reply_address
    from app.models import Campaign, InboundMessage, MailingList
    from tests.helpers.daemons import zone_dns
    from workers.mta.inbound import InboundStore

    url = f"sqlite+aiosqlite:///{directory / 'bench.db'}"
    await upgrade_async(url)
    settings = Settings(
        database_url=url,
        var_dir=directory / "var",
        secret_key="bench-" + "x" * 40,
        clamd=clamd,
        _env_file=None,  # type: ignore[call-arg]
    )
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session:
        news = MailingList(name="bench")
        session.add(news)
        await session.flush()
        [subscriber] = await add_confirmed(session, news.id, [("r@example.com", "", {})])
        campaign = Campaign(name="bench", subject="s", from_email="news@example.com")
        session.add(campaign)
        await session.commit()
        campaign_id = campaign.id
    secret = settings.effective_secret_key()
    target = ReplyTarget(campaign_id=campaign_id, subscriber_id=subscriber)
    address = reply_address(secret, "reply.bench.example", target)
    pem, record = _key()
    replies = directory / "var" / "replies"
    store = InboundStore(
        directory / "var" / "inbound",
        replies=replies,
        reply_domain="reply.bench.example",
        bounce_domain="bounces.bench.example",
    )
    for n in range(messages):
        data = _reply(address, n, pem)
        await store.store(
            f"reader{n}@reader.example", [address], data, client_ip="127.0.0.1", helo="mx"
        )
    with zone_dns() as dns:
        dns.add(
            'reader.example. 60 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"\n'
            f'sel._domainkey.reader.example. 60 IN TXT "{record}"\n'
            '_dmarc.reader.example. 60 IN TXT "v=DMARC1; p=reject"\n'
        )
        resolver = make_resolver([("127.0.0.1", dns.port)], 3.0)
        processor = ReplyProcessor(
            replies,
            sessionmaker,
            Policy.from_settings(settings),
            Authenticator(resolver),
            DaemonScanner.from_settings(settings),
            reports=directory / "var" / "inbound",
        )
        started, cpu = time.perf_counter(), time.process_time()
        stored = await processor.process_all()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await processor.scanner.aclose()
    async with sessionmaker() as session:
        from sqlalchemy import func, select

        verified = await session.scalar(
            select(func.count()).where(
                InboundMessage.dkim == "pass",
                InboundMessage.malware == ("" if clamd else None),
            )
        )
    await engine.dispose()
    assert stored == messages == verified, (stored, messages, verified)
    return messages / elapsed, cpu / messages


async def clamd_scans(address: str, scans: int, rounds: int = 3) -> dict[str, list[float]]:
    """CPU seconds of this process per clamd scan of a reply-sized message, a connection per
    scan (`ClamdClient`, as before) against kept IDSESSION connections (`ClamdSessions`),
    alternating, both 8 scans at a time: {mode: [per-round CPU per scan]}."""
    from app.inbound.scanning import CLAMD_SESSIONS
    from app.safety.clamd import ClamdClient, ClamdSessions

    data = b"Thanks for the issue; the article on page two was good.\r\n" * 40
    client = ClamdClient(address)
    sessions = ClamdSessions(client, size=CLAMD_SESSIONS)
    limit = asyncio.Semaphore(CLAMD_SESSIONS)

    async def per_connection() -> None:
        async with limit:
            await client.scan(data)

    async def on_session() -> None:
        await sessions.scan(data)

    cpu: dict[str, list[float]] = {"connection per scan": [], "sessions": []}
    for _ in range(rounds):
        for mode, scan in (("connection per scan", per_connection), ("sessions", on_session)):
            started = time.process_time()
            await asyncio.gather(*(scan() for _ in range(scans)))
            cpu[mode].append((time.process_time() - started) / scans)
    await sessions.aclose()
    return cpu


def main(argv: list[str] | None = None) -> list[Row]:
    """Print the figure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, help="default 2000 (quick: 400)")
    parser.add_argument("--quick", action="store_true", help="400 messages")
    parser.add_argument("--no-clamd", action="store_true", help="without the clamd scan")
    parser.add_argument(
        "--clamd-scans", type=int, help="only time N clamd scans: connection per scan vs sessions"
    )
    args = parser.parse_args(argv if argv is not None else [])
    if args.clamd_scans:
        from tests.helpers.daemons import ClamdServer as Clamd

        with Clamd() as server:
            cpu = asyncio.run(clamd_scans(server.address, args.clamd_scans))
        for mode, figures in cpu.items():
            each = ", ".join(f"{value * 1000:.3f}" for value in figures)
            print(f"clamd {mode}: {each} ms CPU per scan (load {os.getloadavg()[0]:.1f})")
        return []
    messages = args.messages or (400 if args.quick else 2000)
    from tests.helpers.daemons import ClamdServer

    with tempfile.TemporaryDirectory(dir=ROOT / "var" if (ROOT / "var").is_dir() else None) as d:
        if args.no_clamd:
            rate, cpu = asyncio.run(measure(Path(d), messages, ""))
        else:
            with ClamdServer() as clamd:
                rate, cpu = asyncio.run(measure(Path(d), messages, clamd.address))
    scanned = "without clamd" if args.no_clamd else "clamd scan included"
    print(
        f"inbound replies stored: {rate:,.0f}/s ({messages} DKIM-signed replies, {scanned}); "
        f"{cpu * 1000:.2f} ms CPU each (load {os.getloadavg()[0]:.1f})"
    )
    return [
        Row(
            f"inbound replies stored + checked (SPF/DKIM/DMARC) + scanned, {scanned}, SQLite",
            f"≥ {TARGET:.0f}/s",
            f"{rate:,.0f}/s ({cpu * 1000:.2f} ms CPU per reply)",
            met=rate >= TARGET,
        )
    ]


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
