"""api keys: the stored prefix no longer holds characters of the secret

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Keys issued before this revision stored their first 10 characters (`wk_` and 7 characters
of the secret) beside the hash. New tokens are `wk_<public id>_<secret>` and store only
`wk_<public id>`; older keys have no public id, so their prefix becomes "". Their hashes
are untouched, so every existing key keeps working.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

api_keys = sa.table("api_keys", sa.column("prefix", sa.String(16)))


def upgrade() -> None:
    # Every key here predates public ids, so every stored prefix is a piece of a secret.
    op.execute(api_keys.update().values(prefix=""))


def downgrade() -> None:
    # The characters removed were part of secrets that are not stored: nothing to restore.
    pass
