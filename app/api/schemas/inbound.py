"""Inbound message schemas: the list item, the detail with parts and attachments."""

from __future__ import annotations

from datetime import datetime

from app.api.schemas.common import ReadModel
from app.models import InboundVerdict


class InboundAttachmentRead(ReadModel):
    """An attached file's metadata; its bytes are at `…/attachments/{id}`."""

    id: int
    filename: str
    content_type: str
    size: int
    sha256: str


class InboundRead(ReadModel):
    """A received message with its attribution and verdicts."""

    id: int
    received_at: datetime
    mail_from: str
    recipient: str
    client_ip: str
    from_header: str
    subject: str
    message_id_header: str
    attributed: bool
    attribution: str
    """token (a genuine reply token), forged, unknown (names nothing that exists), none."""
    campaign_id: int | None
    subscriber_id: int | None
    message_id: int | None
    spf: str
    dkim: str
    dmarc: str
    authentication_results: str
    spam_score: float | None
    malware: str | None
    verdict: InboundVerdict
    """clean (delivered to webhooks and forwarded), spam or infected (quarantined)."""
    forwarded_to: str
    raw_size: int


class InboundDetail(InboundRead):
    """One message with its headers, text and HTML parts and attachment list."""

    headers: list[tuple[str, str]]
    text: str
    html: str
    attachments: list[InboundAttachmentRead]
