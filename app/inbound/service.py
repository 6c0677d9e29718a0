"""The inbound store: a reply attributed by its signed token, checked, scanned, kept, and
announced as an `inbound.received` event unless it is quarantined.

A process reads as its steps: `check` (parse, attribute, authenticate, scan, decide the
verdict; no database) and `store` (many at once, with their events, in one transaction).
Forwarding happens after the commit (`forward.py`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.core.events import NewEvent, record_events
from app.core.settings import Settings
from app.inbound import repository
from app.inbound.authentication import Authenticator, Verdicts
from app.inbound.parse import Parsed, parse
from app.inbound.repository import Filters
from app.inbound.scanning import Scanner, ScanResult
from app.mail.reply_address import ReplyTarget, is_reply_address, parse_reply_address
from app.models import (
    Campaign,
    EventKind,
    InboundAttachment,
    InboundMessage,
    InboundVerdict,
    Message,
    Subscriber,
)

EVENT_TEXT_CHARS = 20_000
"""Text carried in the webhook event; the API has all of it."""
COMPRESSION_LEVEL = 6


@dataclass(frozen=True)
class Policy:
    """What deciding about one reply needs from the settings."""

    secret: str
    spam_threshold: float
    authserv_id: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy the settings describe."""
        return cls(
            secret=settings.effective_secret_key(),
            spam_threshold=settings.inbound_spam_threshold,
            authserv_id=settings.mta_hostname,
        )


@dataclass(frozen=True)
class Attribution:
    """What a reply's envelope recipients say it replies to."""

    kind: str
    """token (a genuine token), forged (a reply+ token that does not verify), or none."""
    target: ReplyTarget | None = None


def attribute(secret: str, recipients: tuple[str, ...]) -> Attribution:
    """The first genuine reply token among the recipients; forged if there are only bad ones."""
    forged = False
    for address in recipients:
        target = parse_reply_address(secret, address)
        if target is not None:
            return Attribution("token", target)
        forged = forged or is_reply_address(address)
    return Attribution("forged" if forged else "none")


def verdict(policy: Policy, scan: ScanResult) -> InboundVerdict:
    """Infected beats spam; a clean message is delivered, the others quarantined."""
    if scan.malware:
        return InboundVerdict.infected
    if scan.spam_score is not None and scan.spam_score >= policy.spam_threshold:
        return InboundVerdict.spam
    return InboundVerdict.clean


@dataclass(frozen=True)
class Checked:
    """One reply parsed, attributed, authenticated and scanned: ready to store."""

    parsed: Parsed
    row: InboundMessage
    attachments: list[InboundAttachment]


async def check(
    policy: Policy, authenticator: Authenticator, scanner: Scanner, data: bytes
) -> Checked:
    """Everything about one reply that needs no database (the MTA's trace lines first)."""
    parsed = parse(data)
    attribution = attribute(policy.secret, parsed.trace.recipients)
    checks = await authenticator.verdicts(
        parsed.message,
        parsed.trace.client_ip,
        parsed.trace.helo,
        parsed.trace.mail_from,
        parsed.from_header,
    )
    scan = await scanner.scan(parsed.message)
    row = _row(policy, parsed, data, attribution, checks, scan)
    return Checked(parsed, row, _attachments(parsed))


async def store(session: AsyncSession, checked: list[Checked]) -> list[InboundMessage]:
    """Store checked replies with their events in the caller's transaction (flushes)."""
    rows = [item.row for item in checked if item.row.attributed]
    campaigns = await repository.existing_ids(
        session, Campaign, {r.campaign_id for r in rows if r.campaign_id is not None}
    )
    subscribers = await repository.existing_ids(
        session, Subscriber, {r.subscriber_id for r in rows if r.subscriber_id is not None}
    )
    messages = await repository.existing_ids(
        session, Message, {r.message_id for r in rows if r.message_id is not None}
    )
    for row in rows:
        if (
            (row.campaign_id is not None and row.campaign_id not in campaigns)
            or (row.subscriber_id is not None and row.subscriber_id not in subscribers)
            or (row.message_id is not None and row.message_id not in messages)
        ):
            # The token is genuine but what it names is gone: keep the reply, unattributed.
            row.attributed, row.attribution = False, "unknown"
            row.campaign_id = row.subscriber_id = row.message_id = None
    await repository.add(session, [(item.row, item.attachments) for item in checked])
    clean = [item for item in checked if item.row.verdict is InboundVerdict.clean]
    await record_events(session, [_event(item.row, item.parsed) for item in clean])
    return [item.row for item in checked]


def _row(
    policy: Policy,
    parsed: Parsed,
    data: bytes,
    attribution: Attribution,
    checks: Verdicts,
    scan: ScanResult,
) -> InboundMessage:
    target = attribution.target or ReplyTarget()
    trace = parsed.trace
    return InboundMessage(
        mail_from=trace.mail_from[:320],
        recipient=(trace.recipients[0] if trace.recipients else "")[:320],
        client_ip=trace.client_ip[:64],
        helo=trace.helo[:255],
        from_header=parsed.from_header,
        subject=parsed.subject,
        message_id_header=parsed.message_id,
        attributed=attribution.kind == "token",
        attribution=attribution.kind,
        campaign_id=target.campaign_id,
        subscriber_id=target.subscriber_id,
        message_id=target.message_id,
        headers=[[name, value] for name, value in parsed.headers],
        text=parsed.text,
        html=parsed.html,
        raw=zlib.compress(data, COMPRESSION_LEVEL),
        raw_size=len(data),
        spf=checks.spf,
        dkim=checks.dkim,
        dmarc=checks.dmarc,
        authentication_results=checks.header(policy.authserv_id),
        spam_score=scan.spam_score,
        malware=scan.malware,
        verdict=verdict(policy, scan),
        forwarded_to="",
    )


def _attachments(parsed: Parsed) -> list[InboundAttachment]:
    return [
        InboundAttachment(
            filename=item.filename,
            content_type=item.content_type,
            size=len(item.content),
            sha256=item.sha256,
            content=item.content,
        )
        for item in parsed.attachments
    ]


def summary(row: InboundMessage) -> dict[str, Any]:
    """The verdicts of one message, as the API and the webhook event show them."""
    return {
        "spf": row.spf,
        "dkim": row.dkim,
        "dmarc": row.dmarc,
        "authentication_results": row.authentication_results,
        "spam_score": row.spam_score,
        "malware": row.malware,
        "verdict": row.verdict.value,
    }


def _event(row: InboundMessage, parsed: Parsed) -> NewEvent:
    return NewEvent(
        kind=EventKind.inbound_received,
        email=parseaddr(row.from_header)[1] or row.mail_from,
        campaign_id=row.campaign_id,
        subscriber_id=row.subscriber_id,
        message_id=row.message_id,
        data={
            "inbound_id": row.id,
            "from": row.from_header,
            "to": row.recipient,
            "subject": row.subject,
            "attributed": row.attributed,
            "attribution": row.attribution,
            "text": parsed.text[:EVENT_TEXT_CHARS],
            "attachments": [
                {"filename": a.filename, "content_type": a.content_type, "size": len(a.content)}
                for a in parsed.attachments
            ],
            "verdicts": summary(row),
        },
    )


async def get(session: AsyncSession, inbound_id: int) -> InboundMessage:
    """One inbound message, or NotFound."""
    row = await repository.get(session, inbound_id)
    if row is None:
        raise NotFound(f"inbound message {inbound_id} does not exist")
    return row


async def page(
    session: AsyncSession, filters: Filters, after_id: int, limit: int
) -> list[InboundMessage]:
    """One page of inbound messages, oldest first."""
    return await repository.page(session, filters, after_id, limit)


async def attachments(session: AsyncSession, inbound_id: int) -> list[InboundAttachment]:
    """The files of one message (404 if the message does not exist)."""
    await get(session, inbound_id)
    return await repository.attachments_of(session, inbound_id)


async def attachment(
    session: AsyncSession, inbound_id: int, attachment_id: int
) -> InboundAttachment:
    """One file, or NotFound."""
    found = await repository.attachment(session, inbound_id, attachment_id)
    if found is None:
        raise NotFound(f"inbound message {inbound_id} has no attachment {attachment_id}")
    return found


def raw(row: InboundMessage) -> bytes:
    """The message as received, decompressed."""
    return zlib.decompress(row.raw)
