"""Events: everything that happened to a message or a subscriber, in the order it happened.

One row per fact (sent, delivered, bounced, opened, …). Campaign stats, the transactional
message timeline and webhook deliveries all read from here; the id is the event's identity
for de-duplication and the webhook dispatcher's cursor.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, utcnow
from app.models.send import LedgerId


class EventKind(enum.StrEnum):
    """What happened. Stored as a plain string so new kinds need no migration."""

    queued = "queued"
    sent = "sent"
    delivered = "delivered"
    deferred = "deferred"
    bounced = "bounced"
    failed = "failed"
    complained = "complained"
    suppressed = "suppressed"
    subscribed = "subscribed"
    unsubscribed = "unsubscribed"
    opened = "opened"
    clicked = "clicked"
    inbound_received = "inbound.received"


class Event(Base):
    """One fact about one message or subscriber; `data` holds the evidence (reply, class, url)."""

    __tablename__ = "events"
    __table_args__ = (
        sa.Index("ix_events_campaign_kind", "campaign_id", "kind"),
        sa.Index("ix_events_send_id", "send_id"),
        sa.Index("ix_events_message_id", "message_id"),
        sa.Index("ix_events_subscriber_id", "subscriber_id"),
    )

    id: Mapped[int] = mapped_column(LedgerId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    email: Mapped[str] = mapped_column(sa.String(320), default="")
    campaign_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="SET NULL")
    )
    subscriber_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="SET NULL")
    )
    send_id: Mapped[int | None] = mapped_column(LedgerId)
    """The campaign ledger row, when the event is about a campaign message."""
    message_id: Mapped[int | None] = mapped_column(LedgerId)
    """The transactional message row, when the event is about one."""
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
