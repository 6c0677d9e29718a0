"""admin console: users, sessions, audit log, and daily event rollups (backfilled)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

`event_rollups` is filled from the events already stored, so the dashboard shows the past
from the first start; from here on `app.core.events.record_events` keeps it current.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Moment = app.models.base.UTCDateTime(timezone=True)

# Per campaign (0: outside campaigns), then all mail (-1), as app.core.event_rollups counts.
BACKFILL = {
    "sqlite": """
        INSERT INTO event_rollups (day, kind, campaign_id, machine, shard, count)
        SELECT date(created_at), kind, coalesce(campaign_id, 0),
               coalesce(json_extract(data, '$.machine'), 0) != 0, 0, count(*)
        FROM events GROUP BY 1, 2, 3, 4
        UNION ALL
        SELECT date(created_at), kind, -1,
               coalesce(json_extract(data, '$.machine'), 0) != 0, 0, count(*)
        FROM events GROUP BY 1, 2, 3, 4
    """,
    "postgresql": """
        INSERT INTO event_rollups (day, kind, campaign_id, machine, shard, count)
        SELECT (created_at AT TIME ZONE 'UTC')::date, kind, coalesce(campaign_id, 0),
               coalesce((data->>'machine')::boolean, false), 0, count(*)
        FROM events GROUP BY 1, 2, 3, 4
        UNION ALL
        SELECT (created_at AT TIME ZONE 'UTC')::date, kind, -1,
               coalesce((data->>'machine')::boolean, false), 0, count(*)
        FROM events GROUP BY 1, 2, 3, 4
    """,
}


def upgrade() -> None:
    op.create_table(
        "admin_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "owner",
                "admin",
                "marketer",
                "viewer",
                name="admin_role",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("totp_secret", sa.String(length=64), nullable=True),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=False),
        sa.Column("disabled_at", Moment, nullable=True),
        sa.Column("last_login_at", Moment, nullable=True),
        sa.Column("created_at", Moment, nullable=False),
        sa.Column("updated_at", Moment, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_users")),
        sa.UniqueConstraint("email", name=op.f("uq_admin_users_email")),
    )
    op.create_table(
        "admin_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", Moment, nullable=False),
        sa.Column("last_seen_at", Moment, nullable=False),
        sa.Column("expires_at", Moment, nullable=False),
        sa.Column("revoked_at", Moment, nullable=True),
        sa.Column("client", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["admin_users.id"],
            name=op.f("fk_admin_sessions_user_id_admin_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_admin_sessions_token_hash")),
    )
    op.create_index(op.f("ix_admin_sessions_user_id"), "admin_sessions", ["user_id"])
    op.create_table(
        "admin_audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", Moment, nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor_email", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("details", app.models.base.JSONType, nullable=False),
        sa.ForeignKeyConstraint(
            ["actor_id"],
            ["admin_users.id"],
            name=op.f("fk_admin_audit_actor_id_admin_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_audit")),
    )
    op.create_index(op.f("ix_admin_audit_action"), "admin_audit", ["action"])
    op.create_index(op.f("ix_admin_audit_actor_id"), "admin_audit", ["actor_id"])
    op.create_index("ix_admin_audit_created_at", "admin_audit", ["created_at"])
    op.create_table(
        "event_rollups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("machine", sa.Boolean(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_rollups")),
        sa.UniqueConstraint(
            "day", "kind", "campaign_id", "machine", "shard", name="uq_event_rollups_key"
        ),
    )
    op.create_index("ix_event_rollups_campaign_id", "event_rollups", ["campaign_id"])
    op.execute(BACKFILL[op.get_bind().dialect.name])


def downgrade() -> None:
    op.drop_table("event_rollups")
    op.drop_index("ix_admin_audit_created_at", table_name="admin_audit")
    op.drop_table("admin_audit")
    op.drop_table("admin_sessions")
    op.drop_table("admin_users")
