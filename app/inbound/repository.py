"""Queries of the inbound store: insert a message with its attachments, list with filters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    Campaign,
    InboundAttachment,
    InboundMessage,
    InboundVerdict,
    Message,
    Subscriber,
)


@dataclass(frozen=True)
class Filters:
    """What `GET /inbound` narrows by; None means any."""

    campaign_id: int | None = None
    since: datetime | None = None
    verdict: InboundVerdict | None = None
    attributed: bool | None = None


async def add(
    session: AsyncSession, messages: list[tuple[InboundMessage, list[InboundAttachment]]]
) -> None:
    """Insert messages and their files (two flushes for the lot); rows have ids afterwards."""
    session.add_all([row for row, _ in messages])
    await session.flush()
    files = []
    for row, attachments in messages:
        for attachment in attachments:
            attachment.inbound_id = row.id
            files.append(attachment)
    if files:
        session.add_all(files)
        await session.flush()


async def existing_ids(
    session: AsyncSession, model: type[Campaign] | type[Subscriber] | type[Message], ids: set[int]
) -> set[int]:
    """Which of `ids` exist in the model's table (one query; a token may outlive its row)."""
    if not ids:
        return set()
    return set(await session.scalars(sa.select(model.id).where(model.id.in_(sorted(ids)))))


async def forward_address(session: AsyncSession, campaign_id: int) -> str | None:
    """The campaign's reply forwarding address, if it has one."""
    return await session.scalar(
        sa.select(Campaign.reply_forward_to).where(Campaign.id == campaign_id)
    )


async def page(
    session: AsyncSession, filters: Filters, after_id: int, limit: int
) -> list[InboundMessage]:
    """One page of messages, oldest first (keyset on id)."""
    query = sa.select(InboundMessage).where(InboundMessage.id > after_id)
    if filters.campaign_id is not None:
        query = query.where(InboundMessage.campaign_id == filters.campaign_id)
    if filters.since is not None:
        query = query.where(InboundMessage.received_at >= filters.since)
    if filters.verdict is not None:
        query = query.where(InboundMessage.verdict == filters.verdict)
    if filters.attributed is not None:
        query = query.where(InboundMessage.attributed == filters.attributed)
    rows = await session.scalars(query.order_by(InboundMessage.id).limit(limit))
    return list(rows)


async def get(session: AsyncSession, inbound_id: int) -> InboundMessage | None:
    """One message by id."""
    return await session.get(InboundMessage, inbound_id)


async def attachments_of(session: AsyncSession, inbound_id: int) -> list[InboundAttachment]:
    """The files of one message, in order."""
    rows = await session.scalars(
        sa.select(InboundAttachment)
        .where(InboundAttachment.inbound_id == inbound_id)
        .order_by(InboundAttachment.id)
    )
    return list(rows)


async def attachment(
    session: AsyncSession, inbound_id: int, attachment_id: int
) -> InboundAttachment | None:
    """One file of one message."""
    row = await session.get(InboundAttachment, attachment_id)
    return row if row is not None and row.inbound_id == inbound_id else None


async def mark_forwarded(session: AsyncSession, inbound_id: int, address: str) -> None:
    """Record where a message was forwarded (nothing is owed any more)."""
    await session.execute(
        sa.update(InboundMessage)
        .where(InboundMessage.id == inbound_id)
        .values(forwarded_to=address, forward_retry_at=None)
    )


async def forward_failed(
    session: AsyncSession,
    inbound_id: int,
    lease: datetime,
    attempts: int,
    retry_at: datetime | None,
) -> bool:
    """Count a failed forward and set when it is tried again (None: given up), if the row is
    still under the claim `lease`: a process whose lease ran out in flight does not undo the
    outcome of the one that took the row over. Whether it was recorded."""
    result = await session.execute(
        sa.update(InboundMessage)
        .where(InboundMessage.id == inbound_id, InboundMessage.forward_retry_at == lease)
        .values(forward_attempts=attempts, forward_retry_at=retry_at)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


async def due_forwards(
    session: AsyncSession, now: datetime, limit: int
) -> list[tuple[int, datetime]]:
    """(id, due) of the messages whose forward is due again, longest waiting first: the
    rows themselves, raw message included, are read only by the process that claims one."""
    rows = await session.execute(
        sa.select(InboundMessage.id, InboundMessage.forward_retry_at)
        .where(InboundMessage.forward_retry_at <= now)
        .order_by(InboundMessage.forward_retry_at)
        .limit(limit)
    )
    return [(inbound_id, due) for inbound_id, due in rows if due is not None]


async def claim_forward(
    session: AsyncSession, inbound_id: int, due: datetime, lease_until: datetime
) -> bool:
    """Move a due retry to `lease_until` if no other process moved it first (one UPDATE)."""
    result = await session.execute(
        sa.update(InboundMessage)
        .where(InboundMessage.id == inbound_id, InboundMessage.forward_retry_at == due)
        .values(forward_retry_at=lease_until)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


async def expired_quarantine(session: AsyncSession, cutoff: datetime, limit: int) -> list[int]:
    """Ids of quarantined messages received before `cutoff`, oldest first."""
    ids = await session.scalars(
        sa.select(InboundMessage.id)
        .where(
            InboundMessage.verdict != InboundVerdict.clean,
            InboundMessage.received_at < cutoff,
        )
        .order_by(InboundMessage.received_at)
        .limit(limit)
    )
    return list(ids)


async def delete(session: AsyncSession, ids: list[int]) -> None:
    """Delete messages; their attachments go with them (ON DELETE CASCADE)."""
    await session.execute(
        sa.delete(InboundMessage)
        .where(InboundMessage.id.in_(ids))
        .execution_options(synchronize_session=False)
    )
