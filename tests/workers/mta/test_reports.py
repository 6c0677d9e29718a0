"""The bounce processor's Maildir claims: processors sharing a directory handle each report
once; a claim left by a dead process is taken over after the lease."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.demo import add_subscribers
from app.models import Bounce, Campaign, MailingList, Send, SendStatus
from app.services.bounces import Policy
from app.settings import Settings
from campaigns import identity
from tests.workers.mta.test_bounces import dsn
from workers.bounces.classify import classifier
from workers.mta.inbound import InboundStore
from workers.mta.reports import LEASE, ReportProcessor


async def _rows(sessionmaker: async_sessionmaker[AsyncSession], count: int) -> list[Send]:
    async with sessionmaker() as session:
        mailing_list = MailingList(name="news")
        session.add(mailing_list)
        await session.flush()
        emails = [f"r{index}@example.com" for index in range(count)]
        ids = await add_subscribers(session, mailing_list.id, ((e, "", {}) for e in emails))
        campaign = Campaign(name="c", subject="s", from_email="news@example.com")
        session.add(campaign)
        await session.flush()
        sends = [
            Send(campaign_id=campaign.id, subscriber_id=i, email=e, status=SendStatus.delivered)
            for i, e in zip(ids, emails, strict=True)
        ]
        session.add_all(sends)
        await session.commit()
        return sends


def _processor(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], directory: Path
) -> ReportProcessor:
    return ReportProcessor(
        directory,
        sessionmaker,
        settings.effective_secret_key(),
        Policy.from_settings(settings),
        classifier(),
    )


async def test_two_processors_handle_each_report_once(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    sends = await _rows(sessionmaker, 30)
    store = InboundStore(tmp_path / "inbound")
    secret = settings.effective_secret_key()
    for send in sends:
        verp = identity.verp_address(secret, send.id, settings.bounce_domain)
        await store.store("", [verp], dsn(verp, send.email, "552 5.2.2 mailbox full", "<x@y>"))
    first = _processor(settings, sessionmaker, tmp_path / "inbound")
    second = _processor(settings, sessionmaker, tmp_path / "inbound")
    handled = await asyncio.gather(first.process_all(), second.process_all())
    assert sum(handled) == 30
    async with sessionmaker() as session:
        bounced = (await session.scalars(sa.select(Bounce.send_id))).all()
    assert sorted(bounced) == sorted(send.id for send in sends)
    assert list((tmp_path / "inbound" / "cur").iterdir()) == []


async def test_a_stale_claim_is_taken_over_and_a_fresh_one_is_left_alone(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    [stale_send, fresh_send] = await _rows(sessionmaker, 2)
    secret = settings.effective_secret_key()
    cur = tmp_path / "inbound" / "cur"
    processor = _processor(settings, sessionmaker, tmp_path / "inbound")
    for name, send in (("stale", stale_send), ("fresh", fresh_send)):
        verp = identity.verp_address(secret, send.id, settings.bounce_domain)
        report = dsn(verp, send.email, "550 5.1.1 no such user", "<x@y>")
        (cur / f"{name}:2,").write_bytes(f"X-Warta-Rcpt-To: {verp}\r\n".encode() + report)
    old = time.time() - LEASE - 60
    os.utime(cur / "stale:2,", (old, old))
    assert await processor.process_all() == 1
    async with sessionmaker() as session:
        assert (await session.scalars(sa.select(Bounce.send_id))).all() == [stale_send.id]
    assert [path.name for path in cur.iterdir()] == ["fresh:2,"]
