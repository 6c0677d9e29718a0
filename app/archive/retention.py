"""Retention: delete what is older than WARTA_RETENTION_* allows, a small batch at a time.

Each batch is its own short transaction (`LIMIT` rows chosen by an indexed age), so the
job never holds locks that a sending worker waits on for long, and the job can stop at any
batch boundary. Run by the worker's cron (`workers/worker.py`) every few minutes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive import compaction
from app.core.settings import Settings
from app.models import (
    ArchivedMessage,
    Bounce,
    DeliveryStatus,
    Event,
    IdempotencyKey,
    Message,
    WebhookDelivery,
    utcnow,
)
from app.models.archive import MIME_KEPT
from app.models.message import SENDABLE_STATUSES

TIME_BUDGET = 50.0
"""Seconds one run may take; what is left waits for the next run."""


@dataclass
class RetentionReport:
    """Rows removed per kind by one run (reports: raw texts cleared), and day files."""

    removed: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Everything the run removed or cleared."""
        return sum(self.removed.values())


async def retention_job(ctx: dict[str, Any]) -> int:
    """The worker's cron: enforce every retention setting; how many rows went."""
    engine = ctx["engine"]
    report = await enforce(engine.sessionmaker, engine.settings)
    return report.total


async def enforce(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    now: datetime | None = None,
    *,
    budget: float = TIME_BUDGET,
) -> RetentionReport:
    """Delete (in batches of WARTA_RETENTION_BATCH) what each setting says has expired."""
    now = now or utcnow()
    deadline = time.monotonic() + budget
    batch = settings.retention_batch
    report = RetentionReport()

    async def run(kind: str, days: float, step: Any) -> None:
        if days <= 0:
            return
        cutoff = now - timedelta(days=days)
        report.removed[kind] = await in_batches(sessionmaker, step, cutoff, batch, deadline)

    await run("messages", settings.retention_messages, _archived_messages)
    await run("message_mime", settings.retention_messages, _message_mime)
    await run("events", settings.retention_events, _events)
    await run("reports", settings.retention_reports, _report_texts)
    keys_days = max(settings.retention_idempotency_keys, settings.idempotency_ttl / 86_400)
    await run("idempotency_keys", keys_days if settings.retention_idempotency_keys else 0, _keys)
    await run("webhook_deliveries", settings.retention_webhook_deliveries, _deliveries)
    directory = settings.archive_directory()
    today = now.date()
    report.removed["compacted_files"] = await compaction.compact_marked(
        sessionmaker, directory, today
    )
    report.removed["day_files"] = await compaction.sweep(sessionmaker, directory, today)
    return report


async def in_batches(
    sessionmaker: async_sessionmaker[AsyncSession],
    step: Any,
    cutoff: datetime,
    batch: int,
    deadline: float,
) -> int:
    """Run `step(session, cutoff, batch)` (one batch, one transaction; returns how many it
    removed) until it does less than a batch, or the `time.monotonic()` deadline is past."""
    total = 0
    while True:
        async with sessionmaker() as session:
            count = int(await step(session, cutoff, batch))
            await session.commit()
        total += count
        if count < batch or time.monotonic() >= deadline:
            return total
        await asyncio.sleep(0)  # let the worker's other tasks in between batches


async def _delete_oldest(
    session: AsyncSession, model: Any, id_column: Any, where: list[Any], batch: int
) -> int:
    # The ids are read first, then deleted by key: the same statement on SQLite and
    # PostgreSQL, and each batch locks only its own rows.
    ids = list(
        (
            await session.scalars(
                sa.select(id_column).where(*where).order_by(model.created_at).limit(batch)
            )
        ).all()
    )
    if not ids:
        return 0
    await session.execute(
        sa.delete(model).where(id_column.in_(ids)).execution_options(synchronize_session=False)
    )
    return len(ids)


async def _archived_messages(session: AsyncSession, cutoff: datetime, batch: int) -> int:
    return await _delete_oldest(
        session, ArchivedMessage, ArchivedMessage.id, [ArchivedMessage.created_at < cutoff], batch
    )


async def _message_mime(session: AsyncSession, cutoff: datetime, batch: int) -> int:
    """A transactional message's built MIME goes with its archived copy; the row (status,
    addresses, subject, events) stays. One still to be sent (queued, deferred) keeps it."""
    ids = list(
        (
            await session.scalars(
                sa.select(Message.id)
                .where(
                    MIME_KEPT, Message.created_at < cutoff, Message.status.not_in(SENDABLE_STATUSES)
                )
                .order_by(Message.created_at)
                .limit(batch)
            )
        ).all()
    )
    if ids:
        await session.execute(
            sa.update(Message)
            .where(Message.id.in_(ids), Message.status.not_in(SENDABLE_STATUSES))
            .values(mime=b"")
            .execution_options(synchronize_session=False)
        )
    return len(ids)


async def _events(session: AsyncSession, cutoff: datetime, batch: int) -> int:
    return await _delete_oldest(session, Event, Event.id, [Event.created_at < cutoff], batch)


async def _keys(session: AsyncSession, cutoff: datetime, batch: int) -> int:
    return await _delete_oldest(
        session, IdempotencyKey, IdempotencyKey.id, [IdempotencyKey.created_at < cutoff], batch
    )


async def _deliveries(session: AsyncSession, cutoff: datetime, batch: int) -> int:
    # A pending delivery is still owed to its endpoint: only finished ones expire.
    where = [WebhookDelivery.created_at < cutoff, WebhookDelivery.status != DeliveryStatus.pending]
    return await _delete_oldest(session, WebhookDelivery, WebhookDelivery.id, where, batch)


async def _report_texts(session: AsyncSession, cutoff: datetime, batch: int) -> int:
    """The bounce row stays (it explains a suppression); the raw report it quoted goes."""
    ids = list(
        (
            await session.scalars(
                sa.select(Bounce.id)
                .where(Bounce.created_at < cutoff, Bounce.raw != "")
                .order_by(Bounce.created_at)
                .limit(batch)
            )
        ).all()
    )
    if ids:
        await session.execute(
            sa.update(Bounce)
            .where(Bounce.id.in_(ids))
            .values(raw="")
            .execution_options(synchronize_session=False)
        )
    return len(ids)
