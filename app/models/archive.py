"""The message archive's index: where each archived message's bytes are in the day files."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow
from app.models.bounce import Bounce
from app.models.event import Event
from app.models.message import IdempotencyKey, Message
from app.models.send import LedgerId
from app.models.webhook import WebhookDelivery


class ArchivedMessage(Base):
    """One archived message: the zstd frame it is in, and where in the frame's content.

    A transactional message is keyed by `message_id`; a campaign message by
    (`campaign_id`, `subscriber_id`). The frame (the messages of one batch) is at
    `frame_offset`, `frame_length` bytes long, in the day file `path`; the message is the
    `size` bytes from `start` of its decompressed content; `sha256` is of those bytes, as
    built (before DKIM signing).
    """

    __tablename__ = "archived_messages"
    __table_args__ = (
        sa.UniqueConstraint("message_id", name="uq_archived_messages_message_id"),
        # Subscriber first: the same index finds everything of one subscriber (erasure).
        sa.UniqueConstraint(
            "subscriber_id", "campaign_id", name="uq_archived_messages_subscriber_id"
        ),
        sa.Index("ix_archived_messages_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(LedgerId, primary_key=True, autoincrement=True)
    message_id: Mapped[int | None] = mapped_column(LedgerId)
    campaign_id: Mapped[int | None]
    subscriber_id: Mapped[int | None]
    path: Mapped[str] = mapped_column(sa.String(64))
    """The day file, relative to WARTA_ARCHIVE_DIR (`2026-12-02.zst`)."""
    frame_offset: Mapped[int] = mapped_column(sa.BigInteger)
    frame_length: Mapped[int]
    start: Mapped[int]
    """Where the message begins in the frame's decompressed content."""
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ArchiveCompaction(Base):
    """A day file holding bytes an erasure made unreachable: the retention job rewrites it."""

    __tablename__ = "archive_compactions"

    path: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    marked_at: Mapped[datetime] = mapped_column(default=utcnow)


MIME_KEPT = sa.func.length(Message.mime) > sa.literal_column("0")
"""A message still holding its MIME: the predicate of ix_messages_mime_created_at, written
with a literal so that both databases can match a query's condition against it."""

# Retention deletes the oldest rows of these tables in small batches: each needs its age
# indexed. Declared here, beside the feature that needs them, rather than in each model.
RETENTION_INDEXES = (
    sa.Index("ix_events_created_at", Event.created_at),
    sa.Index("ix_bounces_created_at", Bounce.created_at),
    sa.Index("ix_webhook_deliveries_created_at", WebhookDelivery.created_at),
    sa.Index("ix_idempotency_keys_created_at", IdempotencyKey.created_at),
    # Only the messages still holding their MIME: the cleared ones are never walked again.
    sa.Index(
        "ix_messages_mime_created_at",
        Message.created_at,
        postgresql_where=MIME_KEPT,
        sqlite_where=MIME_KEPT,
    ),
)
