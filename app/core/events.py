"""Writing and reading events in bulk: the one way every part of Warta records what happened."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import event_rollups
from app.core.database import on_postgresql
from app.models import Event, EventKind, utcnow


@dataclass(frozen=True)
class NewEvent:
    """An event to record; ids name what it is about, `data` carries the evidence."""

    kind: EventKind
    email: str = ""
    campaign_id: int | None = None
    subscriber_id: int | None = None
    send_id: int | None = None
    message_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None


_UNNEST_INSERT = sa.text(
    "INSERT INTO events "
    "(kind, created_at, email, campaign_id, subscriber_id, send_id, message_id, data) "
    "SELECT kind, created_at, email, campaign_id, subscriber_id, send_id, message_id, "
    "CAST(data AS jsonb) FROM UNNEST("
    "CAST(:kind AS text[]), CAST(:created_at AS timestamptz[]), CAST(:email AS text[]), "
    "CAST(:campaign_id AS integer[]), CAST(:subscriber_id AS integer[]), "
    "CAST(:send_id AS bigint[]), CAST(:message_id AS bigint[]), CAST(:data AS text[])"
    ") AS new (kind, created_at, email, campaign_id, subscriber_id, send_id, message_id, data)"
)
"""PostgreSQL: a batch of events as one statement over arrays (one column each), instead of
an executemany that runs the INSERT once per event."""


async def record_events(session: AsyncSession, events: Sequence[NewEvent]) -> None:
    """Insert events in one statement (PostgreSQL) or one executemany, in the caller's
    transaction."""
    if not events:
        return
    now = utcnow()
    rows = [
        {
            "kind": event.kind.value,
            "created_at": _aware(event.at or now),
            "email": event.email[:320],
            "campaign_id": event.campaign_id,
            "subscriber_id": event.subscriber_id,
            "send_id": event.send_id,
            "message_id": event.message_id,
            "data": event.data,
        }
        for event in events
    ]
    if on_postgresql(session):
        columns: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in rows[0]}
        columns["data"] = [json.dumps(data) for data in columns["data"]]
        await session.execute(_UNNEST_INSERT, columns)
    else:
        await session.execute(sa.insert(cast(sa.Table, Event.__table__)), rows)
    event_rollups.add(
        session,
        (
            event_rollups.rollup_key(e.kind.value, e.at or now, e.campaign_id, e.data)
            for e in events
        ),
    )


def _aware(at: datetime) -> datetime:
    """A naive time is UTC (as `UTCDateTime` stores it)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def counts_by_kind(session: AsyncSession, campaign_id: int) -> dict[str, int]:
    """Events per kind for one campaign."""
    rows = await session.execute(
        sa.select(Event.kind, sa.func.count())
        .where(Event.campaign_id == campaign_id)
        .group_by(Event.kind)
    )
    return {str(kind): int(count) for kind, count in rows}
