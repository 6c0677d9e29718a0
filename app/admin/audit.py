"""The audit log: who changed what in the console, written in the change's own transaction."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import AdminUser, AuditEntry, utcnow

PAGE_SIZE = 100
CSV_COLUMNS = ("id", "created_at", "actor", "action", "target", "details")


async def record(
    session: AsyncSession,
    actor: AdminUser | str,
    action: str,
    target: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add one entry (e.g. `campaign.pause`, `campaign:12`); the caller's commit keeps it."""
    entry = AuditEntry(
        created_at=utcnow(),
        actor_id=actor.id if isinstance(actor, AdminUser) else None,
        actor_email=actor.email if isinstance(actor, AdminUser) else actor,
        action=action[:64],
        target=target[:200],
        details=details or {},
    )
    session.add(entry)
    await session.flush()
    return entry


@dataclass(frozen=True)
class AuditFilter:
    """What the audit page and its CSV export narrow the log to."""

    actor: str = ""
    action: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> list[sa.ColumnElement[bool]]:
        """The conditions, as SQL."""
        conditions: list[sa.ColumnElement[bool]] = []
        if self.actor:
            conditions.append(AuditEntry.actor_email == self.actor.strip().lower())
        if self.action:
            conditions.append(AuditEntry.action.startswith(self.action.strip(), autoescape=True))
        if self.since is not None:
            conditions.append(AuditEntry.created_at >= self.since)
        if self.until is not None:
            conditions.append(AuditEntry.created_at < self.until)
        return conditions


async def page(
    session: AsyncSession, where: AuditFilter, before: int | None = None, size: int = PAGE_SIZE
) -> list[AuditEntry]:
    """Newest first, keyset-paginated by id (`before` = the last id of the previous page)."""
    query = sa.select(AuditEntry).where(*where.where()).order_by(AuditEntry.id.desc())
    if before is not None:
        query = query.where(AuditEntry.id < before)
    return list(await session.scalars(query.limit(size)))


async def actions(session: AsyncSession) -> list[str]:
    """Every action name in the log, for the filter's choices."""
    return list(
        await session.scalars(sa.select(AuditEntry.action).distinct().order_by(AuditEntry.action))
    )


async def csv_rows(
    sessionmaker: async_sessionmaker[AsyncSession], where: AuditFilter
) -> AsyncIterator[str]:
    """The filtered log as CSV text, oldest first, read in keyset pages."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    last = 0
    while True:
        async with sessionmaker() as session:
            entries = list(
                await session.scalars(
                    sa.select(AuditEntry)
                    .where(*where.where(), AuditEntry.id > last)
                    .order_by(AuditEntry.id)
                    .limit(1000)
                )
            )
        for entry in entries:
            writer.writerow(
                [
                    entry.id,
                    entry.created_at.isoformat(),
                    _safe_cell(entry.actor_email),
                    _safe_cell(entry.action),
                    _safe_cell(entry.target),
                    _safe_cell(json.dumps(entry.details, sort_keys=True)),
                ]
            )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(entries) < 1000:
            return
        last = entries[-1].id


def _safe_cell(value: str) -> str:
    """Keep a spreadsheet from running a cell as a formula (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
