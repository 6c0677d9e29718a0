"""Writing and reading events in bulk: the one way every part of Warta records what happened."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import event_rollups
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


async def record_events(session: AsyncSession, events: Sequence[NewEvent]) -> None:
    """Insert events in one executemany, in the caller's transaction."""
    if not events:
        return
    now = utcnow()
    table = cast(sa.Table, Event.__table__)
    await session.execute(
        sa.insert(table),
        [
            {
                "kind": event.kind.value,
                "created_at": event.at or now,
                "email": event.email[:320],
                "campaign_id": event.campaign_id,
                "subscriber_id": event.subscriber_id,
                "send_id": event.send_id,
                "message_id": event.message_id,
                "data": event.data,
            }
            for event in events
        ],
    )
    event_rollups.add(
        session,
        (
            event_rollups.rollup_key(e.kind.value, e.at or now, e.campaign_id, e.data)
            for e in events
        ),
    )


async def counts_by_kind(session: AsyncSession, campaign_id: int) -> dict[str, int]:
    """Events per kind for one campaign."""
    rows = await session.execute(
        sa.select(Event.kind, sa.func.count())
        .where(Event.campaign_id == campaign_id)
        .group_by(Event.kind)
    )
    return {str(kind): int(count) for kind, count in rows}
