"""The audit log's pages: who changed what, filtered and exported. Entries are written by
`app.core.audit.record` (re-exported here for the console's pages), in the change's own
transaction."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.audit import record as record  # the pages write entries through this module
from app.models import AuditEntry

PAGE_SIZE = 100
CSV_COLUMNS = ("id", "created_at", "actor", "action", "target", "details")


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
