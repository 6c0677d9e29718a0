"""Subscribers and their list memberships."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, enum_type, utcnow


class SubscriberStatus(enum.StrEnum):
    """A blocklisted subscriber receives no campaign mail at all."""

    enabled = "enabled"
    blocklisted = "blocklisted"


class SubscriptionStatus(enum.StrEnum):
    """A membership's state on one list."""

    unconfirmed = "unconfirmed"
    confirmed = "confirmed"
    unsubscribed = "unsubscribed"


class Subscriber(Timestamps, Base):
    """One address; `email` is stored normalised (lower case), so unique case-insensitively."""

    __tablename__ = "subscribers"
    __table_args__ = (
        # Search by part of the address (LIKE '%…%'); a trigram GIN index on PostgreSQL,
        # a plain one on SQLite (see migration 0012).
        sa.Index(
            "ix_subscribers_email_trgm",
            "email",
            postgresql_using="gin",
            postgresql_ops={"email": "gin_trgm_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[SubscriberStatus] = mapped_column(
        enum_type(SubscriberStatus, "subscriber_status"), default=SubscriberStatus.enabled
    )


class Subscription(Base):
    """A subscriber's membership of one list."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        sa.Index("ix_subscriptions_list_status", "list_id", "status", "subscriber_id"),
    )

    subscriber_id: Mapped[int] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    list_id: Mapped[int] = mapped_column(
        sa.ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[SubscriptionStatus] = mapped_column(
        enum_type(SubscriptionStatus, "subscription_status"),
        default=SubscriptionStatus.unconfirmed,
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
