"""DSNs as some MTAs really write them: `Action: failure`, no Action but a 5.x.x Status, or a
delivery-status part that names no usable recipient at all. Each is read as the failure it
reports (the last through the non-standard heuristics) instead of as nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audience.subscribers import add_confirmed
from app.bounces.classify import classifier
from app.bounces.parse.report import ReportKind, parse_report
from app.bounces.processor import ReportProcessor
from app.bounces.service import Policy
from app.core.settings import Settings
from app.mail import identity
from app.mail.identity import Kind
from app.models import Bounce, Campaign, MailingList, Send, SendStatus

VERP = "bounces+c1-aaaaaaaaaa@bounces.localhost"  # parsing alone does not check it


def _report(blocks: str, *, verp: str = VERP, notice: str = "", headers: str = "") -> bytes:
    """A multipart/report whose delivery-status part holds `blocks` after the per-message one."""
    return (
        "From: MAILER-DAEMON@mx.example.net\r\n"
        f"To: {verp}\r\n{headers}"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        f"--B\r\nContent-Type: text/plain\r\n\r\n{notice or 'Delivery failed.'}\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.net\r\n\r\n{blocks}\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "To: dora@example.org\r\nSubject: News\r\n\r\n--B--\r\n"
    ).encode()


NON_STANDARD = {
    "Action: failure": "Action: failure\r\nStatus: 5.1.1\r\n",
    "Action: failed with a comment": "Action: failed (permanent)\r\nStatus: 5.1.1\r\n",
    "opensmtpd's Action: error": "Action: error\r\nStatus: 5.1.1\r\n",
    "no Action, Status 5.1.1": "Status: 5.1.1\r\n",
    "an unknown Action, Status 5.1.1": "Action: bounced\r\nStatus: 5.1.1\r\n",
}


@pytest.mark.parametrize("name", sorted(NON_STANDARD))
def test_non_standard_recipient_blocks_are_read_as_failures(name: str) -> None:
    block = (
        "Final-Recipient: rfc822; dora@example.org\r\n"
        f"{NON_STANDARD[name]}"
        "Diagnostic-Code: smtp; 550 5.1.1 <dora@example.org>: user unknown\r\n"
    )
    report = parse_report(_report(block))
    assert [item.final_recipient for item in report.failures] == ["dora@example.org"], name
    [item] = report.failures
    assert (item.status, item.diagnostic) == ("5.1.1", "550 5.1.1 <dora@example.org>: user unknown")


def test_a_block_without_action_reads_its_status_class_and_standard_ones_are_unchanged() -> None:
    blocks = (
        "Final-Recipient: rfc822; later@example.org\r\nStatus: 4.2.2\r\n\r\n"
        "Final-Recipient: rfc822; fine@example.org\r\nAction: delivered\r\nStatus: 5.0.0\r\n\r\n"
        "Final-Recipient: rfc822; odd@example.org\r\nAction: whatever\r\n"
    )
    report = parse_report(_report(blocks))
    assert report.kind is ReportKind.dsn
    assert [(item.final_recipient, item.action) for item in report.recipients] == [
        ("later@example.org", "delayed"),
        ("fine@example.org", "delivered"),
        ("odd@example.org", ""),
    ]
    assert report.failures == []


EXIM_NOTICE = (
    "This message was created automatically by mail delivery software.\r\n\r\n"
    "A message that you sent could not be delivered to one or more of its\r\n"
    "recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
    "  erin@example.org\r\n"
    "    SMTP error from remote mail server after RCPT TO:<erin@example.org>:\r\n"
    "    550 5.1.1 <erin@example.org>: Recipient address rejected: User unknown\r\n"
)


@pytest.mark.parametrize(
    "blocks",
    [
        "Final-Recipient: rfc822;\r\nAction: failed\r\nStatus: 5.1.1\r\n",  # no address
        "Final-Recipient: x400; /G=erin/S=example/\r\nAction: failed\r\n",  # not an address
        "Final-Recipient: rfc822; erin@example.org\r\nAction: unknown\r\n",  # says nothing
        "",  # only the per-message block
    ],
)
def test_a_delivery_status_without_a_usable_recipient_falls_back_to_the_heuristics(
    blocks: str,
) -> None:
    data = _report(blocks, notice=EXIM_NOTICE, headers="X-Failed-Recipients: erin@example.org\r\n")
    report = parse_report(data)
    assert report.kind is ReportKind.bounce
    [item] = report.failures
    assert (item.final_recipient, item.status) == ("erin@example.org", "5.1.1")
    assert "User unknown" in item.diagnostic
    assert report.original is not None and report.original["To"] == "dora@example.org"


def test_nothing_recognisable_anywhere_is_still_nothing() -> None:
    report = parse_report(_report("Final-Recipient: rfc822;\r\nAction: failed\r\n"))
    assert report.kind is ReportKind.dsn and report.failures == []


async def test_a_signed_non_standard_dsn_bounces_its_row(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    async with sessionmaker() as session:
        mailing_list = MailingList(name="news")
        campaign = Campaign(name="c", subject="s", from_email="news@example.com")
        session.add_all([mailing_list, campaign])
        await session.flush()
        emails = ["dora@example.org", "erin@example.org"]
        ids = await add_confirmed(session, mailing_list.id, ((e, "", {}) for e in emails))
        sends = [
            Send(campaign_id=campaign.id, subscriber_id=i, email=e, status=SendStatus.delivered)
            for i, e in zip(ids, emails, strict=True)
        ]
        session.add_all(sends)
        await session.commit()
    processor = ReportProcessor(
        tmp_path / "inbound",
        sessionmaker,
        settings.effective_secret_key(),
        Policy.from_settings(settings),
        classifier(),
    )
    secret = settings.effective_secret_key()
    verps = [
        identity.verp_address(secret, send.id, settings.bounce_domain, Kind.CAMPAIGN)
        for send in sends
    ]
    failure = "Final-Recipient: rfc822; dora@example.org\r\nAction: failure\r\nStatus: 5.1.1\r\n"
    handled = await processor.handle(f"X-Warta-Rcpt-To: {verps[0]}\r\n".encode() + _report(failure))
    assert (handled.kind, handled.bounces) == ("dsn", 1)
    unusable = _report(
        "Final-Recipient: rfc822;\r\nAction: failed\r\n",
        verp=verps[1],
        notice=EXIM_NOTICE,
        headers="X-Failed-Recipients: erin@example.org\r\n",
    )
    handled = await processor.handle(f"X-Warta-Rcpt-To: {verps[1]}\r\n".encode() + unusable)
    assert (handled.kind, handled.bounces) == ("bounce", 1)
    async with sessionmaker() as session:
        kept = (await session.execute(sa.select(Bounce.email, Bounce.bounce_class))).all()
        statuses = set((await session.scalars(sa.select(Send.status))).all())
    assert sorted(kept) == [
        ("dora@example.org", "invalid_recipient"),
        ("erin@example.org", "invalid_recipient"),
    ]
    assert statuses == {SendStatus.bounced}
