"""inbound: failed forwards are retried (attempts, next try); quarantine retention needs none

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_messages") as table:
        table.add_column(
            sa.Column("forward_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        table.add_column(
            sa.Column("forward_retry_at", app.models.base.UTCDateTime(timezone=True), nullable=True)
        )
        table.create_index("ix_inbound_messages_forward_retry_at", ["forward_retry_at"])


def downgrade() -> None:
    with op.batch_alter_table("inbound_messages") as table:
        table.drop_index("ix_inbound_messages_forward_retry_at")
        table.drop_column("forward_retry_at")
        table.drop_column("forward_attempts")
