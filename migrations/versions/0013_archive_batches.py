"""message archive: one zstd frame per batch; an index for the retention of messages' MIME

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03

`archived_messages` now names a frame (the messages of one batch) and the message's place
in its content, instead of a header frame and a shared body frame (docs/archive.md). The
table is made again: rows of the 0009 layout (a development build of the same release; no
released version wrote them) cannot be read by the new code, and their day files are
removed by the retention job's sweep once no row names them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEDGER_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MIME_KEPT = sa.text("length(mime) > 0")


def _archived_messages(*layout: sa.Column[object]) -> None:
    op.create_table(
        "archived_messages",
        sa.Column("id", LEDGER_ID, autoincrement=True, nullable=False),
        sa.Column("message_id", LEDGER_ID, nullable=True),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.String(length=64), nullable=False),
        *layout,
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


def upgrade() -> None:
    op.drop_index("ix_archived_messages_body", table_name="archived_messages")
    op.drop_index("ix_archived_messages_created_at", table_name="archived_messages")
    op.drop_table("archived_messages")
    _archived_messages(
        sa.Column("frame_offset", sa.BigInteger(), nullable=False),
        sa.Column("frame_length", sa.Integer(), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
    )
    # Retention clears the MIME of old messages oldest first: only rows still holding one.
    op.create_index(
        "ix_messages_mime_created_at",
        "messages",
        ["created_at"],
        unique=False,
        postgresql_where=MIME_KEPT,
        sqlite_where=MIME_KEPT,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_mime_created_at", table_name="messages")
    op.drop_index("ix_archived_messages_created_at", table_name="archived_messages")
    op.drop_table("archived_messages")
    _archived_messages(
        sa.Column("head_offset", sa.BigInteger(), nullable=False),
        sa.Column("head_length", sa.Integer(), nullable=False),
        sa.Column("body_offset", sa.BigInteger(), nullable=False),
        sa.Column("body_length", sa.Integer(), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
    )
    op.create_index(
        "ix_archived_messages_body", "archived_messages", ["body_sha256", "path"], unique=False
    )
