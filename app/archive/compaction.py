"""Day files after the fact: drop files nothing points at, rewrite files an erasure marked.

A day file is only ever named by index rows created on its day (a body is shared only
within the day file it is in), so "is this file still needed" is one indexed look-up.
A rewrite writes the messages index rows still name to a new file (`2026-12-02.c1.zst`),
each frame compressed again with only those messages, moves the index rows to it in short
transactions, and only then removes the old file: every committed index row names a file
that exists, and a reader that raced the move looks again.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
import zstandard
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive import dayfiles
from app.archive.dayfiles import Frame
from app.models import ArchiveCompaction, ArchivedMessage

UPDATE_BATCH = 1000


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC instants a day file's index rows were created between."""
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


async def sweep(
    sessionmaker: async_sessionmaker[AsyncSession], directory: Path, today: date
) -> int:
    """Remove past day files (and leftovers of a rewrite) that no index row names."""
    removed = 0
    for entry in await asyncio.to_thread(_past_files, directory, today):
        day = dayfiles.day_of(entry.name)
        assert day is not None
        if entry.name.endswith(".tmp") or not await _named(sessionmaker, entry.name, day):
            await asyncio.to_thread(entry.unlink, missing_ok=True)
            removed += 1
    return removed


def _past_files(directory: Path, today: date) -> list[Path]:
    if not directory.is_dir():
        return []
    return [
        entry
        for entry in sorted(directory.iterdir())
        if (day := dayfiles.day_of(entry.name)) is not None and day < today and entry.is_file()
    ]


async def _named(sessionmaker: async_sessionmaker[AsyncSession], name: str, day: date) -> bool:
    start, end = day_bounds(day)
    async with sessionmaker() as session:
        found = await session.scalar(
            sa.select(sa.literal(1))
            .where(
                ArchivedMessage.created_at >= start,
                ArchivedMessage.created_at < end,
                ArchivedMessage.path == name,
            )
            .limit(1)
        )
    return found is not None


async def compact_marked(
    sessionmaker: async_sessionmaker[AsyncSession], directory: Path, today: date
) -> int:
    """Rewrite every marked past day file without its unreachable frames; how many."""
    async with sessionmaker() as session:
        marked = list((await session.scalars(sa.select(ArchiveCompaction.path))).all())
    done = 0
    for name in marked:
        day = dayfiles.day_of(name)
        if day is None or day >= today:
            continue  # today's file still grows: it is rewritten once the day is over
        await compact(sessionmaker, directory, name, day)
        async with sessionmaker() as session:
            await session.execute(
                sa.delete(ArchiveCompaction).where(ArchiveCompaction.path == name)
            )
            await session.commit()
        done += 1
    return done


async def compact(
    sessionmaker: async_sessionmaker[AsyncSession], directory: Path, name: str, day: date
) -> str | None:
    """Copy the frames index rows still name into a new file, move the rows, drop the old.

    Returns the new file's name, or None when nothing was kept (the old file is removed).
    """
    old = directory / name
    if not await asyncio.to_thread(old.exists):
        return None
    start, end = day_bounds(day)
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                sa.select(
                    ArchivedMessage.id,
                    ArchivedMessage.frame_offset,
                    ArchivedMessage.frame_length,
                    ArchivedMessage.start,
                    ArchivedMessage.size,
                ).where(
                    ArchivedMessage.created_at >= start,
                    ArchivedMessage.created_at < end,
                    ArchivedMessage.path == name,
                )
            )
        ).all()
    if not rows:
        await asyncio.to_thread(old.unlink, missing_ok=True)
        return None
    named: dict[Frame, set[tuple[int, int]]] = {}
    for _, offset, length, begin, size in rows:
        named.setdefault(Frame(name, offset, length), set()).add((begin, size))
    new_name = _next_generation(directory, name)
    moves = await asyncio.to_thread(_rewrite, directory, name, new_name, named)
    for first in range(0, len(rows), UPDATE_BATCH):
        async with sessionmaker() as session:
            await _move_rows(session, name, new_name, moves, rows[first : first + UPDATE_BATCH])
            await session.commit()
    await asyncio.to_thread(old.unlink, missing_ok=True)
    return new_name


def _next_generation(directory: Path, name: str) -> str:
    day, _, rest = name.partition(".")
    current = rest.split(".")[0]
    generation = int(current[1:]) + 1 if current.startswith("c") and current[1:].isdigit() else 1
    while (directory / f"{day}.c{generation}{dayfiles.SUFFIX}").exists():
        generation += 1
    return f"{day}.c{generation}{dayfiles.SUFFIX}"


Moves = dict[tuple[int, int], tuple[Frame, int]]
"""(old frame offset, old start) → (new frame, new start)."""


def _rewrite(
    directory: Path, name: str, new_name: str, named: dict[Frame, set[tuple[int, int]]]
) -> Moves:
    """Write the named messages of `name` to `new_name` (fsynced, then renamed into place).

    Each old frame becomes frames of only its named messages: nothing else survives. One
    frame at a time (a day file can hold gigabytes); a frame all of whose messages are still
    named is copied as it is stored.
    """
    temporary = directory / (new_name + ".tmp")
    moves: Moves = {}
    offset = 0
    with open(directory / name, "rb") as source, open(temporary, "wb") as target:
        # Writers append to today's file only; taking the lock once waits out one that
        # started at midnight on yesterday's file, and none comes after it.
        fcntl.flock(source.fileno(), fcntl.LOCK_EX)
        fcntl.flock(source.fileno(), fcntl.LOCK_UN)
        for frame in sorted(named, key=_offset):
            kept = sorted(named[frame])
            stored = dayfiles.read_compressed(source, frame)
            if sum(size for _, size in kept) == zstandard.frame_content_size(stored):
                new = Frame(new_name, offset, len(stored))
                moves.update({(frame.offset, start): (new, start) for start, _ in kept})
                target.write(stored)
                offset += len(stored)
                continue
            content = dayfiles.decompress(frame, stored)
            for packed in dayfiles.pack([content[begin : begin + size] for begin, size in kept]):
                new = Frame(new_name, offset, len(packed.data))
                for (old_start, _), (new_start, _) in zip(kept, packed.places, strict=False):
                    moves[(frame.offset, old_start)] = (new, new_start)
                kept = kept[len(packed.places) :]
                target.write(packed.data)
                offset += len(packed.data)
        target.flush()
        os.fsync(target.fileno())
    os.replace(temporary, directory / new_name)
    return moves


def _offset(frame: Frame) -> int:
    return frame.offset


async def _move_rows(
    session: AsyncSession, name: str, new_name: str, moves: Moves, rows: Sequence[Any]
) -> None:
    table = cast(sa.Table, ArchivedMessage.__table__)
    # The old place is part of the condition: a row a retry moved meanwhile stays put.
    params = []
    for row_id, offset, _, begin, _ in rows:
        new, new_start = moves[(offset, begin)]
        params.append(
            {
                "b_id": row_id,
                "b_old": offset,
                "b_offset": new.offset,
                "b_length": new.length,
                "b_start": new_start,
            }
        )
    await session.execute(
        sa.update(table)
        .where(
            table.c.id == sa.bindparam("b_id"),
            table.c.path == name,
            table.c.frame_offset == sa.bindparam("b_old"),
        )
        .values(
            path=new_name,
            frame_offset=sa.bindparam("b_offset"),
            frame_length=sa.bindparam("b_length"),
            start=sa.bindparam("b_start"),
        ),
        params,
    )
