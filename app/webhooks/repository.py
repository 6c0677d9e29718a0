"""The webhook dispatcher's storage: walking the events with a shared cursor, leasing deliveries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    DeliveryStatus,
    Event,
    EventCursor,
    Message,
    MessageStream,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)

CURSOR = "webhooks"


async def cursor_position(session: AsyncSession) -> int:
    """Where the dispatcher stands; the cursor row is created at 0 on first use."""
    found = await session.get(EventCursor, CURSOR)
    if found is not None:
        return found.last_event_id
    session.add(EventCursor(name=CURSOR, last_event_id=0))
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
    found = await session.get(EventCursor, CURSOR, populate_existing=True)
    return found.last_event_id if found is not None else 0


async def settled_events(
    session: AsyncSession, after_id: int, settled_before: datetime, limit: int
) -> list[Event]:
    """Events after the cursor, oldest first, stopping at the first one not yet settled.

    Ids are handed out before commit, so a younger event may become visible before an older
    one; reading only events older than the settle delay keeps the walk from skipping it.
    """
    rows = await session.scalars(
        sa.select(Event).where(Event.id > after_id).order_by(Event.id).limit(limit)
    )
    settled = []
    for event in rows:
        if event.created_at > settled_before:
            break
        settled.append(event)
    return settled


async def settled_end(
    session: AsyncSession, after_id: int, settled_before: datetime, limit: int
) -> int:
    """The id the settled run of events after `after_id` ends at, within `limit` events.

    Worked out by the database: the events still settling are read again at every poll by
    every dispatcher, and at a campaign's pace that was thousands of rows a second into
    Python for one number.
    """
    page = (
        sa.select(Event.id, Event.created_at)
        .where(Event.id > after_id)
        .order_by(Event.id)
        .limit(limit)
        .cte("page")
    )
    unsettled = (
        sa.select(sa.func.min(page.c.id)).where(page.c.created_at > settled_before)
    ).scalar_subquery()
    end = await session.scalar(
        sa.select(sa.func.max(page.c.id)).where(sa.or_(unsettled.is_(None), page.c.id < unsettled))
    )
    return after_id if end is None else int(end)


async def any_endpoint(session: AsyncSession) -> bool:
    """Whether any endpoint exists (one cheap query for a dispatcher with nobody listening)."""
    return bool(await session.scalar(sa.select(sa.select(WebhookEndpoint.id).exists())))


async def endpoints(session: AsyncSession) -> list[WebhookEndpoint]:
    """Every endpoint (disabled ones still collect deliveries, sent once re-enabled)."""
    return list((await session.scalars(sa.select(WebhookEndpoint))).all())


async def streams_of(session: AsyncSession, message_ids: set[int]) -> dict[int, MessageStream]:
    """The stream of each message named."""
    if not message_ids:
        return {}
    rows = await session.execute(
        sa.select(Message.id, Message.stream).where(Message.id.in_(sorted(message_ids)))
    )
    return {row[0]: MessageStream(row[1]) for row in rows}


async def advance(
    session: AsyncSession, old: int, new: int, deliveries: list[tuple[int, int]]
) -> bool:
    """Move the cursor from `old` to `new` and add the deliveries, or do nothing if another
    dispatcher moved it first (the conditional UPDATE is the claim). The caller commits."""
    result = await session.execute(
        sa.update(EventCursor)
        .where(EventCursor.name == CURSOR, EventCursor.last_event_id == old)
        .values(last_event_id=new, updated_at=utcnow())
    )
    if int(result.rowcount) != 1:  # type: ignore[attr-defined]
        await session.rollback()
        return False
    if deliveries:
        now = utcnow()
        table = cast(sa.Table, WebhookDelivery.__table__)
        await session.execute(
            sa.insert(table),
            [
                {
                    "endpoint_id": endpoint_id,
                    "event_id": event_id,
                    "status": DeliveryStatus.pending.value,
                    "attempts": 0,
                    "last_error": "",
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for endpoint_id, event_id in deliveries
            ],
        )
    return True


@dataclass(frozen=True)
class Due:
    """A leased delivery with what is needed to make the request."""

    id: int
    endpoint_id: int
    url: str
    secret: str
    attempts: int
    created_at: datetime
    event: Event


async def lease_due(
    session: AsyncSession, token: str, now: datetime, lease: timedelta, limit: int
) -> list[Due]:
    """Take the lease on up to `limit` due deliveries of enabled endpoints."""
    if limit <= 0:
        return []
    due_ids = (
        sa.select(WebhookDelivery.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookEndpoint.enabled.is_(True),
            WebhookDelivery.status == DeliveryStatus.pending,
            WebhookDelivery.next_attempt_at <= now,
            sa.or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    ids = list((await session.scalars(due_ids)).all())
    if not ids:
        return []
    await session.execute(
        sa.update(WebhookDelivery)
        .where(
            WebhookDelivery.id.in_(ids),
            WebhookDelivery.status == DeliveryStatus.pending,
            sa.or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
        )
        .values(lease_token=token, lease_until=now + lease)
        .execution_options(synchronize_session=False)
    )
    rows = await session.execute(
        sa.select(WebhookDelivery, WebhookEndpoint.url, WebhookEndpoint.secret, Event)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .join(Event, Event.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.lease_token == token)
        .order_by(WebhookDelivery.id)
    )
    return [
        Due(d.id, d.endpoint_id, url, secret, d.attempts, d.created_at, event)
        for d, url, secret, event in rows
    ]


async def record_result(
    session: AsyncSession,
    delivery_id: int,
    token: str,
    values: dict[str, Any],
) -> None:
    """Write one attempt's outcome and release the lease (only if this worker still holds it)."""
    await session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.lease_token == token)
        .values(lease_token=None, lease_until=None, **values)
        .execution_options(synchronize_session=False)
    )


async def disable(session: AsyncSession, endpoint_id: int, reason: str) -> None:
    """Stop delivering to an endpoint until the API re-enables it."""
    await session.execute(
        sa.update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason[:500], updated_at=utcnow())
    )
