"""Erasing a subscriber drops their archived messages: unreachable at once, and gone from
the day file once the retention job has rewritten it."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
import zstandard
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive import dayfiles, retention, service
from app.archive.service import Built
from app.audience import preferences
from app.core.errors import NotFound
from app.core.settings import Settings
from app.models import ArchiveCompaction, ArchivedMessage, Message, Subscriber, utcnow


def message(to: str, secret: str) -> bytes:
    return f"To: {to}\r\nSubject: Hi\r\n\r\nYour code is {secret}.\r\n".encode()


def whole_archive(settings: Settings) -> bytes:
    """Every byte the day files hold, decompressed as another tool would."""
    out = b""
    for path in sorted(settings.archive_directory().iterdir()):
        with open(path, "rb") as file:
            reader = zstandard.ZstdDecompressor().stream_reader(file, read_across_frames=True)
            out += reader.read()
    return out


async def test_erasure_removes_the_archived_messages_and_compaction_their_bytes(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    async with sessionmaker() as session:
        erased = Subscriber(email="gone@example.com", name="Gone")
        kept = Subscriber(email="stays@example.com", name="Stays")
        untouched = Subscriber(email="other@example.com", name="Other")
        receipt = Message(from_email="shop@example.com", to_email="gone@example.com")
        session.add_all([erased, kept, untouched, receipt])
        await session.commit()
        erased_id, kept_id, receipt_id = erased.id, kept.id, receipt.id
        untouched_id = untouched.id
    await service.store(
        sessionmaker,
        settings,
        [
            Built(message("gone@example.com", "ERASE-1"), campaign_id=1, subscriber_id=erased_id),
            Built(message("gone@example.com", "ERASE-2"), message_id=receipt_id),
            Built(message("stays@example.com", "KEEP-1"), campaign_id=1, subscriber_id=kept_id),
        ],
    )
    # A frame (a batch) of its own, every message of which stays: the rewrite copies it as
    # stored (the same bytes a recompression would give, so this checks the moved index).
    await service.store(
        sessionmaker,
        settings,
        [Built(message("other@example.com", "KEEP-2"), campaign_id=1, subscriber_id=untouched_id)],
    )
    async with sessionmaker() as session:
        offset, length = (
            await session.execute(
                sa.select(ArchivedMessage.frame_offset, ArchivedMessage.frame_length).where(
                    ArchivedMessage.subscriber_id == untouched_id
                )
            )
        ).one()
    day_file = settings.archive_directory() / dayfiles.day_file(utcnow())
    untouched_frame = day_file.read_bytes()[offset : offset + length]
    async with sessionmaker() as session:
        subscriber = await session.get(Subscriber, erased_id)
        assert subscriber is not None
        await preferences.erase(session, subscriber)
        await session.commit()
    async with sessionmaker() as session:
        for read in (
            service.raw_campaign_message(session, settings, 1, erased_id),
            service.raw_message(session, settings, receipt_id),
        ):
            try:
                await read
            except NotFound:
                continue
            raise AssertionError("an erased subscriber's message is still readable")
        marked = (await session.scalars(sa.select(ArchiveCompaction.path))).all()
        assert marked == [dayfiles.day_file(utcnow())]
    assert b"ERASE-1" in whole_archive(settings)  # still on disk until the day is over

    # Today's file still grows: it is rewritten by the first run after midnight.
    await retention.enforce(sessionmaker, settings)
    assert b"ERASE-1" in whole_archive(settings)
    report = await retention.enforce(sessionmaker, settings, utcnow() + timedelta(days=1))
    assert report.removed["compacted_files"] == 1
    everything = whole_archive(settings)
    assert b"ERASE-1" not in everything and b"ERASE-2" not in everything
    assert b"gone@example.com" not in everything
    async with sessionmaker() as session:
        expected = message("stays@example.com", "KEEP-1")
        assert await service.raw_campaign_message(session, settings, 1, kept_id) == expected
        assert (await session.scalars(sa.select(ArchiveCompaction.path))).all() == []
        other = message("other@example.com", "KEEP-2")
        assert await service.raw_campaign_message(session, settings, 1, untouched_id) == other
    names = [path.name for path in settings.archive_directory().iterdir()]
    assert names == [dayfiles.day_file(utcnow())[:10] + ".c1.zst"]
    assert untouched_frame in (settings.archive_directory() / names[0]).read_bytes()
