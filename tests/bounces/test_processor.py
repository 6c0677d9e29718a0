"""The bounce processor's Maildir claims: processors sharing a directory handle each report
once; a claim left by a dead process is taken over after the lease."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audience.subscribers import add_confirmed
from app.bounces.classify import classifier
from app.bounces.processor import LEASE, ReportProcessor
from app.bounces.service import Policy
from app.core.settings import Settings
from app.mail import identity
from app.mail.identity import Kind
from app.models import (
    Bounce,
    Campaign,
    MailingList,
    Send,
    SendStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from tests.helpers.reports import dsn
from workers.mta.inbound import InboundStore


async def _rows(sessionmaker: async_sessionmaker[AsyncSession], count: int) -> list[Send]:
    async with sessionmaker() as session:
        mailing_list = MailingList(name="news")
        session.add(mailing_list)
        await session.flush()
        emails = [f"r{index}@example.com" for index in range(count)]
        ids = await add_confirmed(session, mailing_list.id, ((e, "", {}) for e in emails))
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
        verp = identity.verp_address(secret, send.id, settings.bounce_domain, Kind.CAMPAIGN)
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
        verp = identity.verp_address(secret, send.id, settings.bounce_domain, Kind.CAMPAIGN)
        report = dsn(verp, send.email, "550 5.1.1 no such user", "<x@y>")
        (cur / f"{name}:2,").write_bytes(f"X-Warta-Rcpt-To: {verp}\r\n".encode() + report)
    old = time.time() - LEASE - 60
    os.utime(cur / "stale:2,", (old, old))
    assert await processor.process_all() == 1
    async with sessionmaker() as session:
        assert (await session.scalars(sa.select(Bounce.send_id))).all() == [stale_send.id]
    assert [path.name for path in cur.iterdir()] == ["fresh:2,"]


def _plain_dsn(recipient: str, original_headers: str) -> bytes:
    """A DSN sent to the plain bounce address (no VERP token), quoting the original's headers."""
    return (
        "X-Warta-Rcpt-To: bounces@bounces.localhost\r\n"
        "From: MAILER-DAEMON@mx.example.com\r\nSubject: Undeliverable\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n{original_headers}\r\n--B--\r\n"
    ).encode()


async def test_without_a_signed_clue_a_report_is_kept_unattributed_and_acts_on_nothing(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    first = await _rows(sessionmaker, 2)
    processor = _processor(settings, sessionmaker, tmp_path / "inbound")
    email = first[0].email
    # Warta's Feedback-ID is no signature: anyone can write it (and trip the campaign guard).
    feedback = f"To: {email}\r\nFeedback-ID: {first[0].campaign_id}:campaign:warta\r\n"
    handled = await processor.handle(_plain_dsn(email, feedback))
    assert (handled.kind, handled.bounces) == ("unattributed", 0)
    # Nothing but the address, or an address Warta never mailed: the same.
    for address in (first[1].email, "stranger@example.net"):
        handled = await processor.handle(_plain_dsn(address, f"To: {address}\r\n"))
        assert (handled.kind, handled.bounces) == ("unattributed", 0)
    # The signed Message-ID of the returned original names the row.
    secret = settings.effective_secret_key()
    signed = identity.message_id(secret, first[1].id, settings.mta_hostname, Kind.CAMPAIGN)
    quoted = f"To: {first[1].email}\r\nMessage-ID: {signed}\r\n"
    assert (await processor.handle(_plain_dsn(first[1].email, quoted))).bounces == 1
    async with sessionmaker() as session:
        kept = (await session.scalars(sa.select(Bounce).order_by(Bounce.id))).all()
        statuses = dict((await session.execute(sa.select(Send.email, Send.status))).all())
        suppressed = (await session.scalars(sa.select(Suppression.address))).all()
        subscribers = dict(
            (await session.execute(sa.select(Subscriber.email, Subscriber.status))).all()
        )
    assert [(b.email, b.action, b.campaign_id, b.subscriber_id, b.send_id) for b in kept[:3]] == [
        (email, "unattributed: no signed token", None, None, None),
        (first[1].email, "unattributed: no signed token", None, None, None),
        ("stranger@example.net", "unattributed: no signed token", None, None, None),
    ]
    assert all("Final-Recipient" in b.raw and b.status == "5.1.1" for b in kept[:3])
    assert (kept[3].send_id, kept[3].action) == (first[1].id, "suppressed")
    assert statuses == {email: SendStatus.delivered, first[1].email: SendStatus.bounced}
    assert suppressed == [first[1].email]
    assert subscribers[email] is SubscriberStatus.enabled


async def test_replies_and_auto_replies_are_kept_for_a_person(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    corpus = Path(__file__).with_name("corpus")
    store = InboundStore(tmp_path / "inbound")
    for name in ("vacation_autoreply.eml", "human_reply.eml"):
        await store.store(
            "someone@example.com", ["bounces@bounces.localhost"], (corpus / name).read_bytes()
        )
    processor = _processor(settings, sessionmaker, tmp_path / "inbound")
    assert await processor.process_all() == 2
    assert len(list((tmp_path / "inbound" / "other").iterdir())) == 2
    async with sessionmaker() as session:
        assert await session.scalar(sa.select(sa.func.count(Bounce.id))) == 0


async def test_delay_notices_and_not_spam_feedback_change_nothing(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    corpus = Path(__file__).with_name("corpus")
    processor = _processor(settings, sessionmaker, tmp_path / "inbound")
    delayed = (corpus / "postfix_dsn_delayed.eml").read_bytes()
    assert (await processor.handle(delayed)).kind == "delayed"
    not_spam = (
        (corpus / "arf_abuse.eml")
        .read_bytes()
        .replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    )
    assert (await processor.handle(not_spam)).kind == "not_complaint"
    async with sessionmaker() as session:
        assert await session.scalar(sa.select(sa.func.count(Bounce.id))) == 0
