"""Bounces and complaints with their evidence, and the soft-bounce score per address."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow
from app.models.send import LedgerId


class Bounce(Base):
    """One failure or complaint report about one address, what it meant and what was done.

    `kind` is bounce or complaint; `severity` hard, soft or informational (complaints: "");
    `action` what Warta did (suppressed, scored, unsubscribed, none); `raw` the report or
    reply as received, cut to WARTA_BOUNCE_RAW_MAX_BYTES.
    """

    __tablename__ = "bounces"
    __table_args__ = (
        sa.Index("ix_bounces_email", "email"),
        sa.Index("ix_bounces_campaign_created", "campaign_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(LedgerId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    email: Mapped[str] = mapped_column(sa.String(320))
    kind: Mapped[str] = mapped_column(sa.String(16))
    source: Mapped[str] = mapped_column(sa.String(16))
    bounce_class: Mapped[str] = mapped_column(sa.String(32), default="")
    severity: Mapped[str] = mapped_column(sa.String(16), default="")
    status: Mapped[str] = mapped_column(sa.String(16), default="")
    diagnostic: Mapped[str] = mapped_column(sa.String(1000), default="")
    action: Mapped[str] = mapped_column(sa.String(64), default="")
    campaign_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="SET NULL")
    )
    subscriber_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="SET NULL")
    )
    send_id: Mapped[int | None] = mapped_column(LedgerId)
    message_id: Mapped[int | None] = mapped_column(LedgerId)
    """The transactional message row, when the report is about one."""
    raw: Mapped[str] = mapped_column(sa.Text(), default="")


class BounceScore(Base):
    """Mailman-style soft-bounce score: at most one increment a day, reset after quiet days."""

    __tablename__ = "bounce_scores"

    address: Mapped[str] = mapped_column(sa.String(320), primary_key=True)
    score: Mapped[int] = mapped_column(default=0)
    last_bounce_at: Mapped[datetime] = mapped_column(default=utcnow)
