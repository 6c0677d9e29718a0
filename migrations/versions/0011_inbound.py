"""inbound mail: replies stored with their verdicts; campaigns may track replies

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.models.base

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEDGER_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("id", LEDGER_ID, autoincrement=True, nullable=False),
        sa.Column("received_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("mail_from", sa.String(length=320), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=False),
        sa.Column("helo", sa.String(length=255), nullable=False),
        sa.Column("from_header", sa.String(length=998), nullable=False),
        sa.Column("subject", sa.String(length=998), nullable=False),
        sa.Column("message_id_header", sa.String(length=998), nullable=False),
        sa.Column("attributed", sa.Boolean(), nullable=False),
        sa.Column("attribution", sa.String(length=16), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("message_id", LEDGER_ID, nullable=True),
        sa.Column("headers", JSON, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("raw_size", sa.Integer(), nullable=False),
        sa.Column("spf", sa.String(length=16), nullable=False),
        sa.Column("dkim", sa.String(length=16), nullable=False),
        sa.Column("dmarc", sa.String(length=16), nullable=False),
        sa.Column("authentication_results", sa.Text(), nullable=False),
        sa.Column("spam_score", sa.Float(), nullable=True),
        sa.Column("malware", sa.String(length=200), nullable=True),
        sa.Column(
            "verdict",
            sa.Enum(
                "clean",
                "spam",
                "infected",
                name="inbound_verdict",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("forwarded_to", sa.String(length=320), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_inbound_messages_campaign_id_campaigns"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_inbound_messages_subscriber_id_subscribers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_messages")),
    )
    op.create_index("ix_inbound_messages_campaign_id", "inbound_messages", ["campaign_id"])
    op.create_index("ix_inbound_messages_received_at", "inbound_messages", ["received_at"])
    op.create_index(op.f("ix_inbound_messages_verdict"), "inbound_messages", ["verdict"])
    op.create_table(
        "inbound_attachments",
        sa.Column("id", LEDGER_ID, autoincrement=True, nullable=False),
        sa.Column("inbound_id", LEDGER_ID, nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["inbound_id"],
            ["inbound_messages.id"],
            name=op.f("fk_inbound_attachments_inbound_id_inbound_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_attachments")),
    )
    op.create_index(
        op.f("ix_inbound_attachments_inbound_id"), "inbound_attachments", ["inbound_id"]
    )
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(
            sa.Column("track_replies", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("reply_forward_to", sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("reply_forward_to")
        batch.drop_column("track_replies")
    op.drop_table("inbound_attachments")
    op.drop_table("inbound_messages")
