"""Writing one chunk of valid rows: a bulk upsert of subscribers, then of their memberships.

Both are single statements run over the whole chunk (SQLAlchemy batches the rows into
multi-row VALUES), never an ORM object per row. The upsert is keyed by the normalised
address, so importing the same file twice changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.imports.reader import Row
from app.models import ImportMode, Subscriber, SubscriberStatus, Subscription, SubscriptionStatus

_subscribers = Subscriber.__table__
_subscriptions = Subscription.__table__


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
    """Statements built once per job for the session's dialect, run once per chunk."""

    def __init__(self, dialect: str, target: Target) -> None:
        self.target = target
        self.status = (
            SubscriberStatus.blocklisted
            if target.mode is ImportMode.blocklist
            else SubscriberStatus.enabled
        )
        self.upsert = _upsert(dialect, target)
        self.add_memberships = _insert_or_skip(dialect, _subscriptions, ["subscriber_id", "list_id"])

    async def write(self, session: AsyncSession, rows: dict[str, Row], now: datetime) -> None:
        """Upsert the rows' subscribers and add their memberships, in the session's transaction."""
        if not rows:
            return
        status = self.status
        subscribers = [
            {
                "email": email,
                "name": name,
                "attributes": attributes,
                "status": status,
                "created_at": now,
                "updated_at": now,
            }
            for email, (name, attributes) in rows.items()
        ]
        result = await session.execute(self.upsert, subscribers)
        if not self.target.adds_memberships:
            return
        subscriber_ids = result.scalars().all()
        membership = self.target.subscription_status
        memberships = [
            {
                "subscriber_id": subscriber_id,
                "list_id": list_id,
                "status": membership,
                "created_at": now,
                "updated_at": now,
            }
            for subscriber_id in subscriber_ids
            for list_id in self.target.list_ids
        ]
        await session.execute(self.add_memberships, memberships)


def _upsert(dialect: str, target: Target) -> sa.Executable:
    """INSERT … ON CONFLICT (email) DO UPDATE, merging attributes into the stored ones."""
    statement: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_subscribers)
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


def _insert_or_skip(dialect: str, table: sa.Table, keys: list[str]) -> sa.Executable:
    """INSERT … ON CONFLICT DO NOTHING: existing memberships keep their status."""
    statement: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    insert: sa.Executable = statement.on_conflict_do_nothing(index_elements=keys)
    return insert
