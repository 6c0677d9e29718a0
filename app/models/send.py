"""The send ledger: one row per (campaign, subscriber), written before the message leaves."""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, enum_type, utcnow

LedgerId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class SendStatus(enum.StrEnum):
    """Where one recipient's message is."""

    pending = "pending"
    sending = "sending"
    sent = "sent"
    deferred = "deferred"
    delivered = "delivered"
    bounced = "bounced"
    complained = "complained"
    failed = "failed"
    skipped = "skipped"


OPEN_STATUSES = (SendStatus.pending, SendStatus.sending, SendStatus.deferred)


class Send(Base):
    """A recipient of a campaign; the row id names the message (Message-ID, VERP token)."""

    __tablename__ = "sends"
    __table_args__ = (
        sa.UniqueConstraint("campaign_id", "subscriber_id", name="uq_sends_campaign_subscriber"),
        sa.Index("ix_sends_campaign_status", "campaign_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(LedgerId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="SET NULL")
    )
    email: Mapped[str] = mapped_column(sa.String(320))
    status: Mapped[SendStatus] = mapped_column(
        enum_type(SendStatus, "send_status"), default=SendStatus.pending
    )
    attempts: Mapped[int] = mapped_column(default=0)
    last_reply: Mapped[str] = mapped_column(sa.String(1000), default="")
    next_attempt_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
