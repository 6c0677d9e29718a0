"""Writing one chunk of valid rows: a bulk upsert of subscribers, then of their memberships.

A chunk travels to the database as one JSON document that the database expands itself
(`json_each` on SQLite, `jsonb_to_recordset` on PostgreSQL): one bound parameter instead
of six per row. Measured on 100,000 rows, SQLAlchemy's per-row parameter processing for
an executemany cost more than the writes themselves; this costs one `json.dumps`.

The upsert is keyed by the normalised address, so importing a file twice changes nothing
the second time. Memberships are inserted ON CONFLICT DO NOTHING: an existing membership,
unsubscribed included, keeps its status. On PostgreSQL both are one statement (a
data-modifying CTE), on SQLite two (the upsert's RETURNING ids feed the second).
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

from app.audience.csv_reader import Row
from app.models import ImportMode, Subscriber, SubscriberStatus, Subscription, SubscriptionStatus
from app.models.base import UTCDateTime

_subscribers = cast(sa.Table, Subscriber.__table__)
_subscriptions = cast(sa.Table, Subscription.__table__)
_SUBSCRIBER_COLUMNS = ["email", "name", "attributes", "status", "created_at", "updated_at"]
_MEMBERSHIP_COLUMNS = ["subscriber_id", "list_id", "status", "created_at", "updated_at"]


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


def encode(rows: dict[str, Row]) -> str:
    """A chunk's valid rows as the JSON document the statements expand (pure: any thread)."""
    return json.dumps(
        [{"e": email, "n": name, "a": attributes} for email, (name, attributes) in rows.items()],
        ensure_ascii=False,
        separators=(",", ":"),
    )


class ChunkWriter:
    """The statements for one job, built once for the dialect, run once per chunk."""

    def __init__(self, dialect: str, target: Target) -> None:
        self.target = target
        blocklist = target.mode is ImportMode.blocklist
        status = SubscriberStatus.blocklisted if blocklist else SubscriberStatus.enabled
        self.params: dict[str, Any] = {
            "status": status.value,
            "lists": json.dumps(list(target.list_ids)),
            "membership": target.subscription_status.value,
        }
        upsert = _upsert(dialect, target)
        self.first: sa.Executable = upsert
        self.then: sa.Executable | None = None
        if target.adds_memberships and dialect == "postgresql":
            upserted = upsert.returning(_subscribers.c.id).cte("upserted")
            self.first = _add_memberships(dialect, upserted).add_cte(upserted)
        elif target.adds_memberships:
            self.first = upsert.returning(_subscribers.c.id)
            self.then = _add_memberships(dialect, _json_array(dialect, "ids"))

    async def write(self, session: AsyncSession, document: str, now: datetime) -> None:
        """Upsert a chunk (as `encode` made it) and add memberships, in the session's transaction."""
        params = {**self.params, "rows": document, "now": now}
        result = await session.execute(self.first, params)
        if self.then is not None:
            params["ids"] = json.dumps(result.scalars().all())
            await session.execute(self.then, params)


def _upsert(dialect: str, target: Target) -> Any:
    """INSERT … SELECT FROM the document ON CONFLICT (email) DO UPDATE, merging attributes."""
    now = sa.bindparam("now", type_=UTCDateTime())
    fields: tuple[sa.ColumnElement[Any], ...]
    if dialect == "postgresql":
        document = sa.cast(sa.bindparam("rows", type_=sa.Text), JSONB)
        rows = (
            sa.func.jsonb_to_recordset(document)
            .table_valued(sa.column("e", sa.Text), sa.column("n", sa.Text), sa.column("a", JSONB))
            .render_derived(name="r", with_types=True)
        )
        fields = (rows.c.e, rows.c.n, rows.c.a)
    else:
        each = sa.func.json_each(sa.bindparam("rows", type_=sa.Text)).table_valued("value")
        fields = tuple(sa.func.json_extract(each.c.value, f"$.{key}") for key in ("e", "n", "a"))
    # WHERE true: SQLite would otherwise read ON CONFLICT as a join constraint.
    source = sa.select(*fields, sa.bindparam("status", type_=sa.String), now, now).where(sa.true())
    statement = _insert(dialect)(_subscribers).from_select(_SUBSCRIBER_COLUMNS, source)
    new, stored = statement.excluded, _subscribers.c
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
    return statement.on_conflict_do_update(index_elements=[stored.email], set_=changes)


def _add_memberships(dialect: str, subscribers: Any) -> Any:
    """Each of the subscribers (a table whose first column is the id) on each list."""
    now = sa.bindparam("now", type_=UTCDateTime())
    lists = _json_array(dialect, "lists")
    subscriber_id = next(iter(subscribers.c))
    source = (
        sa.select(
            sa.cast(subscriber_id, sa.Integer),
            sa.cast(lists.c.value, sa.Integer),
            sa.bindparam("membership", type_=sa.String),
            now,
            now,
        )
        .select_from(subscribers)
        .join(lists, sa.true())
        .where(sa.true())
    )
    statement = _insert(dialect)(_subscriptions).from_select(_MEMBERSHIP_COLUMNS, source)
    return statement.on_conflict_do_nothing(index_elements=["subscriber_id", "list_id"])


def _json_array(dialect: str, name: str) -> Any:
    """The elements of a JSON array bound as `name`, as a table with a `value` column."""
    bound = sa.bindparam(name, type_=sa.Text)
    if dialect == "postgresql":
        elements = sa.func.jsonb_array_elements_text(sa.cast(bound, JSONB))
        return elements.table_valued("value").render_derived(name=f"{name}_")
    return sa.func.json_each(bound).table_valued("value").alias(f"{name}_")


def _insert(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert
