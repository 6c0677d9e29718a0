"""Keep the bytes of every message as built, and give them back by message or by recipient.

A message is split at the end of its header block: the header block (unique per message:
Message-ID, To, Date) is one frame; the body is stored once per SHA-256 within a day file
and shared by every message of that file that carries it. The index row of a message says
where both its frames are.
What is stored is the message as Warta built it, before the MTA adds its DKIM-Signature.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive import dayfiles
from app.archive.dayfiles import Frame
from app.core.errors import DomainError, NotFound
from app.core.settings import Settings
from app.mail.context import EngineContext
from app.mail.identity import Kind
from app.mail.recording import LedgerRow
from app.models import ArchiveCompaction, ArchivedMessage, Message, utcnow

logger = logging.getLogger(__name__)
HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Built:
    """One message as built for sending, and whose it is."""

    data: bytes
    message_id: int | None = None
    campaign_id: int | None = None
    subscriber_id: int | None = None


def split(data: bytes) -> tuple[bytes, bytes]:
    """The header block (with its blank line) and the body; `head + body == data`."""
    end = data.find(HEAD_END)
    if end < 0:
        return data, b""
    return data[: end + len(HEAD_END)], data[end + len(HEAD_END) :]


def sha256(data: bytes) -> str:
    """Hex SHA-256, the archive's content key."""
    return hashlib.sha256(data).hexdigest()


async def keep(engine: EngineContext, messages: Sequence[tuple[LedgerRow, bytes]]) -> None:
    """Archive messages as built, before they are submitted: (ledger row, MIME) pairs.

    A transactional message is archived once (its bytes never change); a campaign message
    built again for a retry replaces the earlier copy, since the new bytes are what is sent.
    Mail goes out even when the archive cannot be written (disk full): the failure is logged
    for the operator, and sending is what the caller is there for.
    """
    items = [
        Built(
            data,
            message_id=row.row_id if row.kind is Kind.MESSAGE else None,
            campaign_id=row.campaign_id,
            subscriber_id=row.subscriber_id,
        )
        for row, data in messages
    ]
    try:
        await store(engine.sessionmaker, engine.settings, items)
    except Exception:
        logger.exception("archive: %d messages could not be archived", len(items))


async def store(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, items: Sequence[Built]
) -> None:
    """Write the frames of `items` to today's day file, then their index rows."""
    if not settings.archive_enabled or not items:
        return
    now = utcnow()
    name = dayfiles.day_file(now)
    async with sessionmaker() as session:
        items = await _not_archived(session, items)
        if not items:
            return
        pieces = [_Piece.of(item) for item in items]
        bodies = await _bodies_in(session, name, {piece.body_key for piece in pieces})
        new_bodies: dict[str, bytes] = {}
        for piece in pieces:
            if piece.body_key not in bodies and piece.body_key not in new_bodies:
                new_bodies[piece.body_key] = piece.body
        heads = [piece.head for piece in pieces]
        placed = await asyncio.to_thread(
            _write, settings.archive_directory(), name, heads + list(new_bodies.values())
        )
        bodies.update(zip(new_bodies, placed[len(heads) :], strict=True))
        rows = [
            {
                "message_id": piece.item.message_id,
                "campaign_id": piece.item.campaign_id,
                "subscriber_id": piece.item.subscriber_id,
                "path": name,
                "head_offset": head.offset,
                "head_length": head.length,
                "body_offset": bodies[piece.body_key].offset,
                "body_length": bodies[piece.body_key].length,
                "body_sha256": piece.body_key,
                "sha256": piece.key,
                "size": len(piece.item.data),
                "created_at": now,
            }
            for piece, head in zip(pieces, placed[: len(heads)], strict=True)
        ]
        await _upsert(session, rows)
        await session.commit()


@dataclass(frozen=True, slots=True)
class _Piece:
    item: Built
    head: bytes
    body: bytes
    body_key: str
    key: str

    @classmethod
    def of(cls, item: Built) -> _Piece:
        head, body = split(item.data)
        return cls(item, head, body, sha256(body), sha256(item.data))


def _write(directory: Path, name: str, pieces: list[bytes]) -> list[Frame]:
    return dayfiles.append(directory, name, dayfiles.compress(pieces))


async def _not_archived(session: AsyncSession, items: Sequence[Built]) -> list[Built]:
    """Transactional messages keep their bytes across retries: archive each one once."""
    ids = [item.message_id for item in items if item.message_id is not None]
    if not ids:
        return list(items)
    done = set(
        (
            await session.scalars(
                sa.select(ArchivedMessage.message_id).where(ArchivedMessage.message_id.in_(ids))
            )
        ).all()
    )
    return [item for item in items if item.message_id is None or item.message_id not in done]


async def _bodies_in(session: AsyncSession, name: str, keys: set[str]) -> dict[str, Frame]:
    """Bodies already in today's file, found through the messages that carry them. Only
    those are shared, so that a newer message never needs an older day file (retention
    can then drop whole days, and compaction rewrite one file at a time)."""
    rows = await session.execute(
        sa.select(
            ArchivedMessage.body_sha256, ArchivedMessage.body_offset, ArchivedMessage.body_length
        ).where(ArchivedMessage.body_sha256.in_(sorted(keys)), ArchivedMessage.path == name)
    )
    return {key: Frame(name, offset, length) for key, offset, length in rows}


def _insert(session: AsyncSession, table: sa.Table) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


async def _upsert(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert the index rows; a campaign message archived again replaces its row."""
    table = cast(sa.Table, ArchivedMessage.__table__)
    changed = (
        "path",
        "head_offset",
        "head_length",
        "body_offset",
        "body_length",
        "body_sha256",
        "sha256",
        "size",
        "created_at",
    )
    for keys, group in (
        (["message_id"], [row for row in rows if row["message_id"] is not None]),
        (["campaign_id", "subscriber_id"], [row for row in rows if row["message_id"] is None]),
    ):
        if not group:
            continue
        statement = _insert(session, table)
        set_ = {column: getattr(statement.excluded, column) for column in changed}
        await session.execute(
            statement.on_conflict_do_update(index_elements=keys, set_=set_), group
        )


async def raw_message(session: AsyncSession, settings: Settings, message_id: int) -> bytes:
    """The archived bytes of a transactional message, or NotFound."""
    where = ArchivedMessage.message_id == message_id
    return await _raw(session, settings, where, f"message {message_id}")


async def raw_campaign_message(
    session: AsyncSession, settings: Settings, campaign_id: int, subscriber_id: int
) -> bytes:
    """The archived bytes of a campaign's message to a subscriber, or NotFound."""
    where = sa.and_(
        ArchivedMessage.campaign_id == campaign_id, ArchivedMessage.subscriber_id == subscriber_id
    )
    return await _raw(
        session, settings, where, f"the message of campaign {campaign_id} to {subscriber_id}"
    )


async def _raw(
    session: AsyncSession, settings: Settings, where: sa.ColumnElement[bool], what: str
) -> bytes:
    # A compaction may move the frames between our read of the index and of the file:
    # the second look sees the new place.
    for attempt in range(2):
        found = (
            await session.execute(
                sa.select(
                    ArchivedMessage.path,
                    ArchivedMessage.head_offset,
                    ArchivedMessage.head_length,
                    ArchivedMessage.sha256,
                    ArchivedMessage.body_offset,
                    ArchivedMessage.body_length,
                ).where(where)
            )
        ).first()
        if found is None:
            raise NotFound(f"{what} is not in the archive (never archived, expired or erased)")
        head = Frame(found[0], found[1], found[2])
        body = Frame(found[0], found[4], found[5])
        try:
            data = await asyncio.to_thread(_read, settings.archive_directory(), head, body)
        except (OSError, dayfiles.FrameError) as exc:
            if attempt == 0:
                session.expire_all()
                await session.rollback()  # a fresh snapshot of the index
                continue
            raise ArchiveDamaged(f"{what}: the archived bytes cannot be read ({exc})") from exc
        if sha256(data) == found[3]:
            return data
        if attempt == 0:
            await session.rollback()
            continue
        raise ArchiveDamaged(f"{what}: the archived bytes do not match their SHA-256")
    raise AssertionError("unreachable")


def _read(directory: Path, head: Frame, body: Frame) -> bytes:
    return dayfiles.read(directory, head) + dayfiles.read(directory, body)


class ArchiveDamaged(DomainError):
    """The index names bytes the day files no longer hold intact."""

    status = 500
    title = "Archived message unreadable"


async def forget_subscriber(session: AsyncSession, subscriber_id: int, address: str) -> int:
    """Erasure: drop every archived message to the subscriber (campaign or transactional).

    The index rows go in the caller's transaction, so the bytes are unreachable at once;
    each day file they were in is marked, and the retention job rewrites it without them.
    """
    # Transactional messages are found through the messages table's index on the address.
    to_address = sa.select(Message.id).where(Message.to_email == address)
    where = sa.or_(
        ArchivedMessage.subscriber_id == subscriber_id,
        ArchivedMessage.message_id.in_(to_address.scalar_subquery()),
    )
    paths = set((await session.scalars(sa.select(ArchivedMessage.path).where(where))).all())
    if not paths:
        return 0
    result = await session.execute(
        sa.delete(ArchivedMessage).where(where).execution_options(synchronize_session=False)
    )
    table = cast(sa.Table, ArchiveCompaction.__table__)
    await session.execute(
        _insert(session, table).on_conflict_do_nothing(),
        [{"path": path, "marked_at": utcnow()} for path in sorted(paths)],
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
