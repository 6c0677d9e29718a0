"""admin console at scale and at rest: events by subscriber, subscriber search; TOTP sealed

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The subscriber page (and GET /subscribers/{id}/export) reads a subscriber's events:
    # without it, one subscriber's timeline is a scan of the whole events table.
    op.create_index("ix_events_subscriber_id", "events", ["subscriber_id"])
    # Subscriber search by part of the address (LIKE '%…%'): a trigram index answers it
    # without reading every subscriber. pg_trgm ships with PostgreSQL and is a trusted
    # extension (13+): the database's owner may create it. SQLite gets a plain index of the
    # same name, so the models describe both.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_index(
        "ix_subscribers_email_trgm",
        "subscribers",
        ["email"],
        postgresql_using="gin",
        postgresql_ops={"email": "gin_trgm_ops"},
    )
    # A sealed TOTP secret (app.admin.totp.seal) is longer than the plain base32 one.
    with op.batch_alter_table("admin_users") as batch:
        batch.alter_column(
            "totp_secret", existing_type=sa.String(64), type_=sa.String(128), nullable=True
        )
    _seal_totp_secrets()


def _seal_totp_secrets() -> None:
    """Seal the plain TOTP secrets stored before this revision, if WARTA_SECRET_KEY is set.

    Without it the key would be one generated into this process's var/ directory, which need
    not be the one the app reads (a migration run elsewhere): the secrets would be sealed
    under a key no sign-in has. They stay plain then, and each is sealed with the app's key
    at its user's next sign-in (app.admin.users.check_credentials)."""
    from app.core.settings import get_settings

    if not get_settings().secret_key:
        return
    connection = op.get_bind()
    users = sa.table("admin_users", sa.column("id", sa.Integer), sa.column("totp_secret"))
    rows = connection.execute(
        sa.select(users.c.id, users.c.totp_secret).where(users.c.totp_secret.is_not(None))
    ).all()
    plain = [(user_id, secret) for user_id, secret in rows if not secret.startswith("v1.")]
    if not plain:
        return
    from app.admin import totp

    secret_key = get_settings().effective_secret_key()
    for user_id, secret in plain:
        connection.execute(
            users.update()
            .where(users.c.id == user_id)
            .values(totp_secret=totp.seal(secret, secret_key, user_id))
        )


def downgrade() -> None:
    # Sealed secrets cannot go back into 64 characters: the second factors are turned off
    # (the users enrol again), as an owner's "Reset second factor" would.
    admin_users = sa.table(
        "admin_users",
        sa.column("totp_secret"),
        sa.column("totp_last_step", sa.BigInteger),
    )
    op.execute(admin_users.update().values(totp_secret=None, totp_last_step=0))
    with op.batch_alter_table("admin_users") as batch:
        batch.alter_column(
            "totp_secret", existing_type=sa.String(128), type_=sa.String(64), nullable=True
        )
    op.drop_index("ix_subscribers_email_trgm", table_name="subscribers")
    op.drop_index("ix_events_subscriber_id", table_name="events")
