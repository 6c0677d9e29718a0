"""The chunk loop of an import: read a chunk, write it with the job's progress, repeat.

Each chunk is one transaction holding its rows *and* the job's counters, so the job row
always tells exactly what is stored; a crash loses at most the chunk in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audience.csv_reader import Chunk, CsvReader
from app.audience.csv_writer import ChunkWriter, Target, encode
from app.core.database import unit_of_work
from app.models import ImportJob, ImportStatus, SubscriptionStatus, utcnow

Sessionmaker = async_sessionmaker[AsyncSession]
Progress = Callable[[ImportJob], None]
MAX_STORED_ERRORS = 1000
"""Row errors kept in the job; `rows_failed` still counts every one."""


async def import_chunks(
    sessionmaker: Sessionmaker, job: ImportJob, batch_size: int, progress: Progress | None
) -> None:
    """Import the job's file chunk by chunk, updating `job` and its row after each one.

    The next chunk is read, checked and encoded in a thread while this one is written.
    """
    target = Target(
        mode=job.mode,
        overwrite=job.overwrite,
        list_ids=tuple(job.list_ids),
        subscription_status=SubscriptionStatus(job.subscription_status),
    )
    async with sessionmaker() as session:
        dialect = session.get_bind().dialect.name
    writer = ChunkWriter(dialect, target)
    with CsvReader(Path(job.path), overwrite=job.overwrite) as reader:
        chunks = reader.chunks(batch_size)

        def prepare() -> tuple[Chunk, str] | None:
            chunk = next(chunks, None)
            return None if chunk is None else (chunk, encode(chunk.rows) if chunk.rows else "")

        following = asyncio.ensure_future(asyncio.to_thread(prepare))
        try:
            # shield: a cancelled job must still wait below for the thread using the file.
            while (prepared := await asyncio.shield(following)) is not None:
                following = asyncio.ensure_future(asyncio.to_thread(prepare))
                await _write_chunk(sessionmaker, writer, job, *prepared)
                if progress is not None:
                    progress(job)
        finally:
            if not following.done():
                await asyncio.wait([following])
            if not following.cancelled():
                following.exception()  # retrieved: an error here is already being raised


async def _write_chunk(
    sessionmaker: Sessionmaker, writer: ChunkWriter, job: ImportJob, chunk: Chunk, document: str
) -> None:
    """One transaction: the chunk's rows and the job's progress, committed together."""
    values: dict[str, Any] = {
        # status/error/finished_at again: heals a job another process wrongly recovered.
        "status": ImportStatus.running,
        "error": "",
        "finished_at": None,
        "bytes_read": chunk.bytes_read,
        "rows_processed": job.rows_processed + chunk.processed,
        "rows_imported": job.rows_imported + chunk.valid,
        "rows_failed": job.rows_failed + len(chunk.errors),
    }
    room = MAX_STORED_ERRORS - len(job.errors)
    if chunk.errors and room > 0:
        values["errors"] = [*job.errors, *chunk.errors[:room]]
    async with unit_of_work(sessionmaker) as session:
        if document:
            await writer.write(session, document, utcnow())
        await session.execute(sa.update(ImportJob).where(ImportJob.id == job.id).values(values))
    for name, value in values.items():
        setattr(job, name, value)
