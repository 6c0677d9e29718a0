"""Messages: claiming rows to send, recording attempts and the MTA's word, with their events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience.suppression_scopes import scopes_for
from app.core.events import NewEvent, record_events
from app.models import (
    SENDABLE_STATUSES,
    Event,
    EventKind,
    Message,
    MessageStatus,
    MessageStream,
    SuppressionScope,
    utcnow,
)

# What the MTA's final word may replace: a complaint is never overwritten, and nothing goes
# back to `delivered` once the recipient's server has bounced or complained.
_REPLACEABLE: dict[MessageStatus, tuple[MessageStatus, ...]] = {
    MessageStatus.delivered: (MessageStatus.queued, MessageStatus.sent, MessageStatus.deferred),
    MessageStatus.bounced: (
        MessageStatus.queued,
        MessageStatus.sent,
        MessageStatus.deferred,
        MessageStatus.delivered,
    ),
    MessageStatus.failed: (MessageStatus.queued, MessageStatus.sent, MessageStatus.deferred),
    MessageStatus.complained: (
        MessageStatus.queued,
        MessageStatus.sent,
        MessageStatus.deferred,
        MessageStatus.delivered,
    ),
}
_EVENT_OF = {
    MessageStatus.delivered: EventKind.delivered,
    MessageStatus.bounced: EventKind.bounced,
    MessageStatus.failed: EventKind.failed,
    MessageStatus.complained: EventKind.complained,
    MessageStatus.sent: EventKind.sent,
    MessageStatus.deferred: EventKind.deferred,
    MessageStatus.suppressed: EventKind.suppressed,
}


# The MTA's outcome words (app/bounces/outcomes.py) as message statuses; a deferral is None.
MTA_OUTCOMES = {"delivered": MessageStatus.delivered, "failed": MessageStatus.bounced}


@dataclass(frozen=True)
class Claimed:
    """A message a worker holds the lease on and may submit now."""

    id: int
    to_email: str
    mime: bytes
    attempts: int
    stream: MessageStream


@dataclass(frozen=True)
class Attempt:
    """What one submission of a claimed message to the MTA gave."""

    message_id: int
    status: MessageStatus
    reply: str
    to_email: str
    next_attempt_at: datetime | None = None


async def claim(
    session: AsyncSession,
    ids: Sequence[int],
    token: str,
    now: datetime,
    lease: timedelta,
    extra: int = 0,
) -> list[Claimed]:
    """Take the lease on the messages of `ids` that are due and not held by another worker,
    and on up to `extra` other queued ones (a burst of requests is then sent in batches).

    Conditional UPDATEs decide, so two workers never both hold one message.
    """
    free = sa.or_(Message.lease_until.is_(None), Message.lease_until < now)
    if ids:
        await session.execute(
            sa.update(Message)
            .where(
                Message.id.in_(ids),
                Message.status.in_(SENDABLE_STATUSES),
                sa.or_(Message.next_attempt_at.is_(None), Message.next_attempt_at <= now),
                free,
            )
            .values(lease_token=token, lease_until=now + lease)
            .execution_options(synchronize_session=False)
        )
    if extra > 0:
        others = (
            sa.select(Message.id)
            .where(Message.status == MessageStatus.queued, free)
            .order_by(Message.id)
            .limit(extra)
            .with_for_update(skip_locked=True)  # PostgreSQL: never wait for another job's rows
            .scalar_subquery()
        )
        await session.execute(
            sa.update(Message)
            .where(Message.id.in_(others), Message.status == MessageStatus.queued, free)
            .values(lease_token=token, lease_until=now + lease)
            .execution_options(synchronize_session=False)
        )
    rows = await session.execute(
        sa.select(Message.id, Message.to_email, Message.mime, Message.attempts, Message.stream)
        .where(Message.lease_token == token)
        .order_by(Message.id)
    )
    return [Claimed(row[0], row[1], row[2], row[3], MessageStream(row[4])) for row in rows]


async def suppressed_now(session: AsyncSession, claimed: Sequence[Claimed]) -> set[int]:
    """The claimed messages whose recipient was suppressed (for their stream) since they were
    accepted: suppression is checked again at send, as for campaigns."""
    if not claimed:
        return set()
    scopes = await scopes_for(session, {row.to_email for row in claimed})
    return {
        row.id
        for row in claimed
        if scopes.get(row.to_email, set()) & {SuppressionScope.all.value, row.stream.value}
    }


async def record_attempts(session: AsyncSession, token: str, attempts: Sequence[Attempt]) -> None:
    """Write each submission's outcome, release the lease and record the events."""
    if not attempts:
        return
    table = cast(sa.Table, Message.__table__)
    now = utcnow()
    statement = (
        sa.update(table)
        .where(table.c.id == sa.bindparam("b_id"), table.c.lease_token == token)
        .values(
            status=sa.bindparam("b_status"),
            last_reply=sa.bindparam("b_reply"),
            next_attempt_at=sa.bindparam("b_next", type_=Message.next_attempt_at.type),
            sent_at=sa.bindparam("b_sent", type_=Message.sent_at.type),
            attempts=table.c.attempts + sa.bindparam("b_inc"),
            lease_token=None,
            lease_until=None,
            updated_at=now,
        )
    )
    await session.execute(
        statement,
        [
            {
                "b_id": item.message_id,
                "b_status": item.status.value,
                "b_reply": item.reply[:1000],
                "b_next": item.next_attempt_at,
                "b_sent": now if item.status == MessageStatus.sent else None,
                "b_inc": 0 if item.status == MessageStatus.suppressed else 1,
            }
            for item in attempts
        ],
    )
    await record_events(
        session,
        [
            NewEvent(
                _EVENT_OF[item.status],
                email=item.to_email,
                message_id=item.message_id,
                data={"reply": item.reply[:1000]},
            )
            for item in attempts
        ],
    )


async def due(
    session: AsyncSession, now: datetime, queued_before: datetime, limit: int
) -> list[int]:
    """Messages no job seems to hold: queued for a while, or deferred and due again."""
    rows = await session.scalars(
        sa.select(Message.id)
        .where(
            sa.or_(
                sa.and_(Message.status == MessageStatus.queued, Message.created_at < queued_before),
                sa.and_(Message.status == MessageStatus.deferred, Message.next_attempt_at <= now),
            ),
            sa.or_(Message.lease_until.is_(None), Message.lease_until < now),
        )
        .order_by(Message.id)
        .limit(limit)
    )
    return list(rows.all())


async def record_delivery(
    session: AsyncSession,
    updates: Sequence[tuple[int, MessageStatus | None, str]],
    *,
    events: bool = True,
) -> None:
    """The MTA's word on messages: (id, final status or None for a mere deferral, reply).

    Same shape as `ledger.record_delivery`. A deferral keeps the status (`sent`: the MTA
    holds the message) and refreshes the last reply; both write an event with the reply,
    unless `events` is off (the bounce service records its own, with the class).
    Unknown ids are ignored (a message may have been deleted).
    """
    if not updates:
        return
    ids = sorted({row for row, _, _ in updates})
    known = {
        row[0]: (row[1], MessageStatus(row[2]))
        for row in await session.execute(
            sa.select(Message.id, Message.to_email, Message.status).where(Message.id.in_(ids))
        )
    }
    table = cast(sa.Table, Message.__table__)
    now = utcnow()
    facts: list[NewEvent] = []
    finals: list[dict[str, Any]] = []
    replies: list[dict[str, Any]] = []
    for row, status, reply in updates:
        if row not in known:
            continue
        email, current = known[row]
        data = {"reply": reply[:1000]}
        if status is None:
            replies.append({"b_id": row, "b_reply": reply[:1000]})
            facts.append(NewEvent(EventKind.deferred, email=email, message_id=row, data=data))
            continue
        if current in _REPLACEABLE.get(status, ()):
            finals.append({"b_id": row, "b_status": status.value, "b_reply": reply[:1000]})
            known[row] = (email, status)
        facts.append(NewEvent(_EVENT_OF[status], email=email, message_id=row, data=data))
    by_id = table.c.id == sa.bindparam("b_id")
    if finals:
        await session.execute(
            sa.update(table)
            .where(by_id)
            .values(
                status=sa.bindparam("b_status"), last_reply=sa.bindparam("b_reply"), updated_at=now
            ),
            finals,
        )
    if replies:
        await session.execute(
            sa.update(table)
            .where(by_id)
            .values(last_reply=sa.bindparam("b_reply"), updated_at=now),
            replies,
        )
    if events:
        await record_events(session, facts)


async def timeline(session: AsyncSession, message_id: int) -> list[Event]:
    """The events of one message, oldest first."""
    rows = await session.scalars(
        sa.select(Event).where(Event.message_id == message_id).order_by(Event.id)
    )
    return list(rows.all())
