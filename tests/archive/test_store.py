"""The archive's store: one frame per batch, one copy per transactional message, day files that
several processes append to at once, and the raw routes."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from pathlib import Path

import httpx
import sqlalchemy as sa
import zstandard
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive import dayfiles, service
from app.archive.service import Built
from app.core import api_keys
from app.core.settings import Settings
from app.models import ArchivedMessage, utcnow

BODY = b"Hello,\r\n\r\nyour receipt is attached.\r\n"


def message(to: str, body: bytes = BODY, mid: str = "1") -> bytes:
    """A message as Warta builds one: CRLF header block, blank line, body."""
    head = f"Message-ID: <m{mid}@warta.test>\r\nTo: {to}\r\nSubject: Receipt\r\n\r\n"
    return head.encode() + body


def today_file(settings: Settings) -> Path:
    return settings.archive_directory() / dayfiles.day_file(utcnow())


async def test_a_batch_is_one_frame_and_repeated_bodies_cost_little(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    body = b"".join(b"Line %d of the same long notice to everyone.\r\n" % n for n in range(200))
    batch = [message(f"r{n}@example.com", body, mid=str(n)) for n in range(1, 101)]
    other = message("c@example.com", b"Something else entirely.\r\n", mid="101")
    await service.store(sessionmaker, settings, [Built(batch[0], message_id=1)])
    one = today_file(settings).stat().st_size
    await service.store(
        sessionmaker,
        settings,
        [Built(data, message_id=n) for n, data in enumerate(batch[1:], start=2)]
        + [Built(other, message_id=101)],
    )
    async with sessionmaker() as session:
        frames = set(
            (
                await session.execute(
                    sa.select(ArchivedMessage.frame_offset, ArchivedMessage.frame_length)
                )
            ).all()
        )
        assert len(frames) == 2  # the first call's frame and the second call's
        for n, data in enumerate(batch, start=1):
            assert await service.raw_message(session, settings, n) == data
        assert await service.raw_message(session, settings, 101) == other
    # A hundred more messages with the body cost less than four times one message alone:
    # the body is compressed once per frame, each further message adds its header block.
    grown = today_file(settings).stat().st_size - one
    assert len(body) > 8_000 and grown < 4 * one
    # The frame is standalone: another tool decompresses it with no help from the index.
    (offset, length) = max(frames)
    frame = today_file(settings).read_bytes()[offset : offset + length]
    content = zstandard.ZstdDecompressor().decompress(frame)
    assert content == b"".join(batch[1:]) + other


async def test_a_transactional_message_is_archived_once_and_a_campaign_resend_replaces(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    data = message("a@example.com")
    await service.store(sessionmaker, settings, [Built(data, message_id=7)])
    size = today_file(settings).stat().st_size
    await service.store(sessionmaker, settings, [Built(data, message_id=7)])
    assert today_file(settings).stat().st_size == size

    first, again = message("s@example.com", mid="c1"), message("s@example.com", mid="c1-retry")
    for data in (first, again):
        await service.store(
            sessionmaker,
            settings,
            [Built(data, campaign_id=3, subscriber_id=9)],
        )
    async with sessionmaker() as session:
        assert await service.raw_campaign_message(session, settings, 3, 9) == again
        count = sa.select(sa.func.count()).select_from(ArchivedMessage)
        assert await session.scalar(count) == 2


def _append_many(directory: str, name: str, worker: int, count: int) -> list[tuple[int, int]]:
    """One process's appends: `count` frames, each alone, as workers write them."""
    placed = []
    for index in range(count):
        (packed,) = dayfiles.pack([f"w{worker}-{index}|".encode() * 50])
        (frame,) = dayfiles.append(Path(directory), name, [packed.data])
        placed.append((frame.offset, frame.length))
    return placed


def test_processes_appending_to_one_day_file_never_overlap(tmp_path: Path) -> None:
    name = dayfiles.day_file(utcnow())
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=context) as pool:
        runs = [pool.submit(_append_many, str(tmp_path), name, worker, 200) for worker in range(4)]
        placed = [future.result() for future in runs]
    for worker, frames in enumerate(placed):
        for index, (offset, length) in enumerate(frames):
            frame = dayfiles.Frame(name, offset, length)
            assert dayfiles.read(tmp_path, frame) == f"w{worker}-{index}|".encode() * 50
    # The file is one valid zstd stream of 800 frames: another tool can read it as is.
    with open(tmp_path / name, "rb") as file:
        reader = zstandard.ZstdDecompressor().stream_reader(file, read_across_frames=True)
        assert reader.read().count(b"|") == 800 * 50


async def test_the_raw_routes_answer_rfc822_or_a_problem(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    data = message("a@example.com")
    await service.store(
        sessionmaker,
        settings,
        [
            Built(data, message_id=11),
            Built(data, campaign_id=5, subscriber_id=6),
        ],
    )
    for path in ("/api/v1/messages/11/raw", "/api/v1/campaigns/5/sends/6/raw"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "message/rfc822"
        assert response.content == data
    for path in ("/api/v1/messages/12/raw", "/api/v1/campaigns/5/sends/7/raw"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert "not in the archive" in response.json()["detail"]
    async with sessionmaker() as session:
        _, token = await api_keys.create_key(session, "lists", ["lists:read"])
        await session.commit()
    denied = await client.get(
        "/api/v1/messages/11/raw", headers={"Authorization": f"Bearer {token}"}
    )
    assert denied.status_code == 403


async def test_nothing_is_archived_when_the_archive_is_off(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    off = settings.model_copy(update={"archive_enabled": False})
    await service.store(sessionmaker, off, [Built(message("a"), message_id=1)])
    assert not settings.archive_directory().exists()


async def test_damaged_bytes_are_an_error_never_wrong_bytes(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    data = message("a@example.com")
    await service.store(sessionmaker, settings, [Built(data, message_id=11)])
    path = today_file(settings)
    damaged = bytearray(path.read_bytes())
    damaged[-6] ^= 0xFF  # inside the frame: its checksum no longer matches
    path.write_bytes(bytes(damaged))
    response = await client.get("/api/v1/messages/11/raw")
    assert response.status_code == 500
    assert response.json()["title"] == "Archived message unreadable"
