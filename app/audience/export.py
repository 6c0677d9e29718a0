"""The CSV export: matching subscribers streamed in keyset batches, never all in memory."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audience.subscribers import SubscriberQuery, filters
from app.models import Subscriber

Sessionmaker = async_sessionmaker[AsyncSession]
EXPORT_COLUMNS = ("email", "name", "status", "created_at", "updated_at", "attributes")
EXPORT_BATCH_SIZE = 5000
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""Leading characters that make Excel, LibreOffice or Google Sheets read a cell as a formula."""


def neutralise(cell: str) -> str:
    """A cell a spreadsheet shows as text: a leading formula trigger gets a `'` before it.

    OWASP's CSV-injection rule, applied to every cell, so `-5` becomes `'-5` too: Warta
    cannot tell a number typed into a name from the start of a formula. The attributes
    cell is a JSON object and always starts with `{`, so its values come out exactly.
    """
    return "'" + cell if cell.startswith(FORMULA_TRIGGERS) else cell


def export_rows(
    sessionmaker: Sessionmaker, query: SubscriberQuery, *, batch_size: int = EXPORT_BATCH_SIZE
) -> AsyncIterator[str]:
    """CSV text of the matching subscribers, in keyset batches, each read in its own session.

    Columns are fixed (EXPORT_COLUMNS) with the attributes as one JSON object, as listmonk
    does: a stream cannot know the union of attribute names before its last row. The
    filters are checked now and the first part holds the header and the first batch.
    """
    return _export(sessionmaker, filters(query), batch_size)


async def _export(
    sessionmaker: Sessionmaker, clauses: list[sa.ColumnElement[bool]], batch_size: int
) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    columns = (
        Subscriber.id,
        Subscriber.email,
        Subscriber.name,
        Subscriber.status,
        Subscriber.created_at,
        Subscriber.updated_at,
        Subscriber.attributes,
    )
    after = 0
    while True:
        async with sessionmaker() as session:
            batch = (
                await session.execute(
                    sa.select(*columns)
                    .where(Subscriber.id > after, *clauses)
                    .order_by(Subscriber.id)
                    .limit(batch_size)
                )
            ).all()
        for _, email, name, status, created_at, updated_at, attributes in batch:
            cells = (
                email,
                name,
                status,
                created_at.isoformat(),
                updated_at.isoformat(),
                json.dumps(attributes, ensure_ascii=False, separators=(",", ":")),
            )
            writer.writerow([neutralise(cell) for cell in cells])
        # The header comes with the first batch: a caller that awaits the first part before
        # answering turns a failing query into an error status instead of a cut-off body.
        if text := _drain(buffer):
            yield text
        if len(batch) < batch_size:
            return
        after = batch[-1][0]


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
