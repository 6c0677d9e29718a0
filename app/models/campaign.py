"""Campaigns and the lists they go to."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, enum_type


class CampaignStatus(enum.StrEnum):
    """Lifecycle: draft → scheduled → running ⇄ paused → finished, or cancelled."""

    draft = "draft"
    scheduled = "scheduled"
    running = "running"
    paused = "paused"
    finished = "finished"
    cancelled = "cancelled"


class Campaign(Timestamps, Base):
    """A message to the union of some lists, optionally narrowed by a segment."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    subject: Mapped[str] = mapped_column(sa.String(998))
    from_email: Mapped[str] = mapped_column(sa.String(400))
    reply_to: Mapped[str | None] = mapped_column(sa.String(400))
    template_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("templates.id", ondelete="RESTRICT"), index=True
    )
    html: Mapped[str] = mapped_column(sa.Text, default="")
    text: Mapped[str] = mapped_column(sa.Text, default="")
    segment: Mapped[dict[str, Any] | None]
    status: Mapped[CampaignStatus] = mapped_column(
        enum_type(CampaignStatus, "campaign_status"), default=CampaignStatus.draft, index=True
    )
    send_at: Mapped[datetime | None]
    rate: Mapped[float | None] = mapped_column(sa.Float)
    tracking: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    """Rewrite links for click tracking and add an open pixel (off by default)."""
    track_replies: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    """Set Reply-To to a signed reply address so replies are stored and attributed."""
    reply_forward_to: Mapped[str | None] = mapped_column(sa.String(320))
    """Forward clean replies to this address (none by default)."""
    status_reason: Mapped[str] = mapped_column(sa.String(500), default="")
    audience_size: Mapped[int] = mapped_column(default=0)
    ledger_base: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class CampaignList(Base):
    """A list a campaign is addressed to."""

    __tablename__ = "campaign_lists"

    campaign_id: Mapped[int] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    list_id: Mapped[int] = mapped_column(
        sa.ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class CampaignLink(Base):
    """A URL of a tracked campaign's HTML; click links name it by `position`, never by URL.

    Stored when the campaign starts, so a click redirect can only lead where the campaign
    itself linked (no open redirect).
    """

    __tablename__ = "campaign_links"

    campaign_id: Mapped[int] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    url: Mapped[str] = mapped_column(sa.Text)
