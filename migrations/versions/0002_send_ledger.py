"""send ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sends",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "sending",
                "sent",
                "deferred",
                "delivered",
                "bounced",
                "complained",
                "failed",
                "skipped",
                name="send_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_reply", sa.String(length=1000), nullable=False),
        sa.Column("next_attempt_at", app.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("sent_at", app.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_sends_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_sends_subscriber_id_subscribers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sends")),
        sa.UniqueConstraint("campaign_id", "subscriber_id", name="uq_sends_campaign_subscriber"),
    )
    with op.batch_alter_table("sends", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sends_campaign_status", ["campaign_id", "status", "id"], unique=False
        )

    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("status_reason", sa.String(length=500), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("audience_size", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("ledger_base", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("ledger_base")
        batch_op.drop_column("audience_size")
        batch_op.drop_column("status_reason")
        batch_op.drop_column("rate")

    with op.batch_alter_table("sends", schema=None) as batch_op:
        batch_op.drop_index("ix_sends_campaign_status")

    op.drop_table("sends")
