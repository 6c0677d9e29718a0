"""Writing one chunk of valid rows: a bulk upsert of subscribers, then of their memberships.

Both are single statements over the whole chunk, never an ORM object per row. The upsert is keyed by the normalised
address, so importing the same file twice changes nothing the second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from app.imports.reader import Row
from app.models import ImportMode, Subscriber, SubscriberStatus, Subscription, SubscriptionStatus
from app.models.base import UTCDateTime

_subscribers = cast(sa.Table, Subscriber.__table__)
_subscriptions = cast(sa.Table, Subscription.__table__)


@dataclass(frozen=True, slots=True)
class Target:
    """What a job does with each valid row."""

    mode: ImportMode
    overwrite: bool
    list_ids: tuple[int, ...]
    subscription_status: SubscriptionStatus

    @property
    def adds_memberships(self) -> bool:
        """Whether rows go onto lists (subscribe mode with lists named)."""
        return self.mode is ImportMode.subscribe and bool(self.list_ids)


class ChunkWriter:
    """Statements built once per job for the session's dialect, run once per chunk.

    A chunk travels as one JSON document, expanded by the database (`json_each` on SQLite,
    `jsonb_to_recordset` on PostgreSQL): one bound parameter instead of six per row, which
    spares the per-row parameter processing that otherwise costs more than the writes.
    """

    def __init__(self, dialect: str, target: Target) -> None:
        self.target = target
        self.status = (
            SubscriberStatus.blocklisted
            if target.mode is ImportMode.blocklist
            else SubscriberStatus.enabled
        ).value
        self.lists = json.dumps(list(target.list_ids))
        self.upsert = _upsert(dialect, target)
        self.add_memberships = _add_memberships(dialect)

    async def write(self, session: AsyncSession, document: str, now: datetime) -> None:
        """Upsert a chunk (as `encode` made it) and add memberships, in the session's transaction."""
        result = await session.execute(
            self.upsert, {"rows": document, "status": self.status, "now": now}
        )
        if not self.target.adds_memberships:
            return
        await session.execute(
            self.add_memberships,
            {
                "ids": json.dumps(result.scalars().all()),
                "lists": self.lists,
                "membership": self.target.subscription_status.value,
                "now": now,
            },
        )


def encode(rows: dict[str, Row]) -> str:
    """A chunk's valid rows as the JSON document the statements expand (pure: any thread)."""
    return json.dumps(
        [{"e": email, "n": name, "a": attributes} for email, (name, attributes) in rows.items()],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _upsert(dialect: str, target: Target) -> sa.Executable:
    """INSERT … SELECT FROM the chunk ON CONFLICT (email) DO UPDATE, merging attributes."""
    now = sa.bindparam("now", type_=UTCDateTime())
    if dialect == "postgresql":
        document = sa.cast(sa.bindparam("rows", type_=sa.Text), JSONB)
        rows = (
            sa.func.jsonb_to_recordset(document)
            .table_valued(sa.column("e", sa.Text), sa.column("n", sa.Text), sa.column("a", JSONB))
            .render_derived(name="r", with_types=True)
        )
        email, name, attributes = rows.c.e, rows.c.n, rows.c.a
    else:
        each = sa.func.json_each(sa.bindparam("rows", type_=sa.Text)).table_valued("value")
        email, name, attributes = (
            sa.func.json_extract(each.c.value, f"$.{key}") for key in ("e", "n", "a")
        )
    # WHERE true: SQLite would otherwise read ON CONFLICT as a join constraint.
    source = sa.select(
        email, name, attributes, sa.bindparam("status", type_=sa.String), now, now
    ).where(sa.true())
    columns = ["email", "name", "attributes", "status", "created_at", "updated_at"]
    statement: Any = _insert(dialect)(_subscribers).from_select(columns, source)
    new = statement.excluded
    stored = _subscribers.c
    changes: dict[str, Any] = {}
    if target.overwrite:
        # An empty cell sets nothing: keep the stored name, merge attributes key by key.
        changes["name"] = sa.case((new.name == "", stored.name), else_=new.name)
        changes["attributes"] = (
            stored.attributes.op("||")(new.attributes)
            if dialect == "postgresql"
            else sa.func.json_patch(stored.attributes, new.attributes)
        )
        changes["updated_at"] = new.updated_at
    if target.mode is ImportMode.blocklist:
        changes["status"] = new.status
        changes["updated_at"] = new.updated_at
    if not changes:
        # A no-op update rather than DO NOTHING, so RETURNING reports existing rows too.
        changes["email"] = new.email
    statement = statement.on_conflict_do_update(index_elements=[stored.email], set_=changes)
    if target.adds_memberships:
        statement = statement.returning(stored.id)
    upsert: sa.Executable = statement
    return upsert


def _add_memberships(dialect: str) -> sa.Executable:
    """Every subscriber id x list id, ON CONFLICT DO NOTHING: existing memberships stay."""
    now = sa.bindparam("now", type_=UTCDateTime())
    ids, lists = (_json_array(dialect, name) for name in ("ids", "lists"))
    source = (
        sa.select(
            sa.cast(ids.c.value, sa.Integer),
            sa.cast(lists.c.value, sa.Integer),
            sa.bindparam("membership", type_=sa.String),
            now,
            now,
        )
        .select_from(ids)
        .join(lists, sa.true())
        .where(sa.true())
    )
    columns = ["subscriber_id", "list_id", "status", "created_at", "updated_at"]
    statement: Any = _insert(dialect)(_subscriptions).from_select(columns, source)
    insert: sa.Executable = statement.on_conflict_do_nothing(
        index_elements=["subscriber_id", "list_id"]
    )
    return insert


def _json_array(dialect: str, name: str) -> Any:
    """The elements of a JSON array bound as `name`, as a table with a `value` column."""
    bound = sa.bindparam(name, type_=sa.Text)
    if dialect == "postgresql":
        elements = sa.func.jsonb_array_elements_text(sa.cast(bound, JSONB))
        return elements.table_valued("value").render_derived(name=f"{name}_")
    return sa.func.json_each(bound).table_valued("value").alias(f"{name}_")


def _insert(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert
