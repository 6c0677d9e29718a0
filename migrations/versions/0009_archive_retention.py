"""message archive: the index of archived messages, files to compact, retention indexes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

The bytes live in day files under WARTA_ARCHIVE_DIR (docs/archive.md); these tables say
where. Retention needs no schema of its own: it deletes by the existing `created_at`s.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEDGER_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "archived_messages",
        sa.Column("id", LEDGER_ID, autoincrement=True, nullable=False),
        sa.Column("message_id", LEDGER_ID, nullable=True),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.String(length=64), nullable=False),
        sa.Column("head_offset", sa.BigInteger(), nullable=False),
        sa.Column("head_length", sa.Integer(), nullable=False),
        sa.Column("body_offset", sa.BigInteger(), nullable=False),
        sa.Column("body_length", sa.Integer(), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archived_messages")),
        sa.UniqueConstraint("message_id", name="uq_archived_messages_message_id"),
        sa.UniqueConstraint(
            "subscriber_id", "campaign_id", name="uq_archived_messages_subscriber_id"
        ),
    )
    op.create_index(
        "ix_archived_messages_created_at", "archived_messages", ["created_at"], unique=False
    )
    op.create_index(
        "ix_archived_messages_body", "archived_messages", ["body_sha256", "path"], unique=False
    )
    op.create_table(
        "archive_compactions",
        sa.Column("path", sa.String(length=64), nullable=False),
        sa.Column("marked_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_archive_compactions")),
    )
    # Retention walks events, bounces and webhook deliveries by age.
    op.create_index("ix_events_created_at", "events", ["created_at"], unique=False)
    op.create_index("ix_bounces_created_at", "bounces", ["created_at"], unique=False)
    op.create_index(
        "ix_webhook_deliveries_created_at", "webhook_deliveries", ["created_at"], unique=False
    )
    op.create_index(
        "ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_index("ix_webhook_deliveries_created_at", table_name="webhook_deliveries")
    op.drop_index("ix_bounces_created_at", table_name="bounces")
    op.drop_index("ix_events_created_at", table_name="events")
    op.drop_table("archive_compactions")
    op.drop_index("ix_archived_messages_body", table_name="archived_messages")
    op.drop_index("ix_archived_messages_created_at", table_name="archived_messages")
    op.drop_table("archived_messages")
