"""Inbound mail that is not a report: people's replies, kept with their verdicts."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, enum_type, utcnow
from app.models.send import LedgerId


class InboundVerdict(enum.StrEnum):
    """What scanning made of a message: clean is delivered, the others are quarantined."""

    clean = "clean"
    spam = "spam"
    infected = "infected"


class InboundMessage(Base):
    """One received message: raw (zlib), parsed parts, attribution and verdicts."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        sa.Index("ix_inbound_messages_campaign_id", "campaign_id"),
        sa.Index("ix_inbound_messages_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(LedgerId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    mail_from: Mapped[str] = mapped_column(sa.String(320), default="")
    """The envelope sender (empty for the null reverse-path)."""
    recipient: Mapped[str] = mapped_column(sa.String(320), default="")
    """The envelope recipient at the inbound domain (the reply address)."""
    client_ip: Mapped[str] = mapped_column(sa.String(64), default="")
    helo: Mapped[str] = mapped_column(sa.String(255), default="")
    from_header: Mapped[str] = mapped_column(sa.String(998), default="")
    subject: Mapped[str] = mapped_column(sa.String(998), default="")
    message_id_header: Mapped[str] = mapped_column(sa.String(998), default="")
    attributed: Mapped[bool] = mapped_column(default=False)
    """Whether a genuine reply token named what this replies to."""
    attribution: Mapped[str] = mapped_column(sa.String(16), default="none")
    """token (genuine), forged (a reply+ token with a bad signature) or none."""
    campaign_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="SET NULL")
    )
    subscriber_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="SET NULL")
    )
    message_id: Mapped[int | None] = mapped_column(LedgerId)
    """The transactional message replied to."""
    headers: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    """[[name, value], …] in message order."""
    text: Mapped[str] = mapped_column(sa.Text, default="")
    html: Mapped[str] = mapped_column(sa.Text, default="")
    raw: Mapped[bytes] = mapped_column(sa.LargeBinary)
    """The message as received (with Warta's trace headers), zlib-compressed."""
    raw_size: Mapped[int] = mapped_column(default=0)
    spf: Mapped[str] = mapped_column(sa.String(16), default="none")
    dkim: Mapped[str] = mapped_column(sa.String(16), default="none")
    dmarc: Mapped[str] = mapped_column(sa.String(16), default="none")
    authentication_results: Mapped[str] = mapped_column(sa.Text, default="")
    """The verdicts as an RFC 8601 Authentication-Results header value."""
    spam_score: Mapped[float | None] = mapped_column(sa.Float)
    """spamd's score; None when spamd is not configured."""
    malware: Mapped[str | None] = mapped_column(sa.String(200))
    """clamd's signature name, "" when clean; None when clamd is not configured."""
    verdict: Mapped[InboundVerdict] = mapped_column(
        enum_type(InboundVerdict, "inbound_verdict"), default=InboundVerdict.clean, index=True
    )
    forwarded_to: Mapped[str] = mapped_column(sa.String(320), default="")
    forward_attempts: Mapped[int] = mapped_column(default=0)
    forward_retry_at: Mapped[datetime | None] = mapped_column(index=True)
    """When a failed forward is tried again; None = nothing owed (done, or given up)."""


class InboundAttachment(Base):
    """A file attached to an inbound message: metadata and bytes."""

    __tablename__ = "inbound_attachments"

    id: Mapped[int] = mapped_column(LedgerId, primary_key=True, autoincrement=True)
    inbound_id: Mapped[int] = mapped_column(
        LedgerId, sa.ForeignKey("inbound_messages.id", ondelete="CASCADE"), index=True
    )
    filename: Mapped[str] = mapped_column(sa.String(255), default="")
    content_type: Mapped[str] = mapped_column(sa.String(255), default="")
    size: Mapped[int] = mapped_column(default=0)
    sha256: Mapped[str] = mapped_column(sa.String(64), default="")
    content: Mapped[bytes] = mapped_column(sa.LargeBinary)
