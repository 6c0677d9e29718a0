"""Transactional (and API-sent broadcast) messages: one row per recipient, and idempotency keys."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, enum_type, utcnow
from app.models.send import LedgerId


class MessageStream(enum.StrEnum):
    """Which stream a message belongs to; suppressions and webhooks filter by it."""

    transactional = "transactional"
    broadcast = "broadcast"


class MessageStatus(enum.StrEnum):
    """Where one message is."""

    queued = "queued"
    sent = "sent"
    delivered = "delivered"
    deferred = "deferred"
    bounced = "bounced"
    complained = "complained"
    failed = "failed"
    suppressed = "suppressed"


SENDABLE_STATUSES = (MessageStatus.queued, MessageStatus.deferred)


class Message(Base):
    """One message to one recipient, its built MIME and where it stands.

    The row id names the message (Message-ID `<m123.mac@host>`, VERP `bounces+m123-mac@…`).
    `lease_token`/`lease_until` let exactly one worker send it at a time.
    """

    __tablename__ = "messages"
    __table_args__ = (
        sa.Index("ix_messages_status_next", "status", "next_attempt_at"),
        sa.Index("ix_messages_to_email", "to_email", "id"),
    )

    id: Mapped[int] = mapped_column(LedgerId, primary_key=True, autoincrement=True)
    stream: Mapped[MessageStream] = mapped_column(
        enum_type(MessageStream, "message_stream"), default=MessageStream.transactional
    )
    status: Mapped[MessageStatus] = mapped_column(
        enum_type(MessageStatus, "message_status"), default=MessageStatus.queued
    )
    api_key_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    from_email: Mapped[str] = mapped_column(sa.String(400))
    to_email: Mapped[str] = mapped_column(sa.String(320))
    subject: Mapped[str] = mapped_column(sa.String(998), default="")
    tags: Mapped[str] = mapped_column(sa.String(800), default="")
    """`,tag1,tag2,`: delimited so that one LIKE finds a tag on both databases."""
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    mime: Mapped[bytes] = mapped_column(sa.LargeBinary, default=b"")
    attempts: Mapped[int] = mapped_column(default=0)
    last_reply: Mapped[str] = mapped_column(sa.String(1000), default="")
    next_attempt_at: Mapped[datetime | None]
    lease_token: Mapped[str | None] = mapped_column(sa.String(32))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class IdempotencyKey(Base):
    """The first response to a request made with an `Idempotency-Key`, per API key.

    The unique constraint is what makes concurrent duplicates safe: the second insert fails
    (or, on PostgreSQL, waits for the first transaction and then fails).
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        sa.UniqueConstraint("api_key_id", "key", name="uq_idempotency_keys_api_key_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    api_key_id: Mapped[int] = mapped_column(sa.ForeignKey("api_keys.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(sa.String(255))
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    status_code: Mapped[int] = mapped_column(default=202)
    response: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
