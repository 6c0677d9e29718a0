"""Keep the bytes of every message as built, and give them back by message or by recipient.

The messages of one batch go to today's day file as one zstd frame (`dayfiles.pack`): the
index row of a message says which frame (offset and length in the file) and where in the
frame's content the message is (start and size). What is stored is the message as Warta
built it, before the MTA adds its DKIM-Signature.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY as pg_array
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
from app.models import ArchiveCompaction, ArchivedMessage, Message, Send, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Built:
    """One message as built for sending, and whose it is."""

    data: bytes
    message_id: int | None = None
    campaign_id: int | None = None
    subscriber_id: int | None = None


def sha256(data: bytes) -> str:
    """Hex SHA-256, the archive's content key."""
    return hashlib.sha256(data).hexdigest()


IndexRows = list[dict[str, Any]]
"""Index rows of messages already in a day file, for `add_index` to insert."""


async def write(engine: EngineContext, messages: Sequence[tuple[LedgerRow, bytes]]) -> IndexRows:
    """Archive messages as built, before they are submitted: (ledger row, MIME) pairs are
    written to the day file, and their index rows go into the caller's transaction (the one
    that claims the rows) with `add_index`.

    A campaign message built again for a retry replaces the earlier copy, since the new
    bytes are what is sent; the caller archives a transactional message once (its bytes
    never change). Mail goes out even when the archive cannot be written (disk full):
    nothing is returned, the failure is logged for the operator, and sending is what the
    caller is there for."""
    items = _items(messages)
    if not engine.settings.archive_enabled or not items:
        return []
    try:
        return await _written(engine.settings, items)
    except Exception:
        logger.exception("archive: %d messages could not be archived", len(items))
        return []


async def add_index(session: AsyncSession, rows: IndexRows) -> None:
    """Insert the index rows `write` returned, in the caller's transaction."""
    if rows:
        await _upsert(session, rows)


def _items(messages: Sequence[tuple[LedgerRow, bytes]]) -> list[Built]:
    return [
        Built(
            data,
            message_id=row.row_id if row.kind is Kind.MESSAGE else None,
            campaign_id=row.campaign_id,
            subscriber_id=row.subscriber_id,
        )
        for row, data in messages
    ]


async def store(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, items: Sequence[Built]
) -> None:
    """Write `items` to today's day file (one frame per batch), then their index rows."""
    if not settings.archive_enabled or not items:
        return
    async with sessionmaker() as session:
        items = await _not_archived(session, items)
        if not items:
            return
        await _upsert(session, await _written(settings, items))
        await session.commit()


async def _written(settings: Settings, items: Sequence[Built]) -> IndexRows:
    """Append `items` to today's day file; their index rows."""
    now = utcnow()
    name = dayfiles.day_file(now)
    # Hashing, compression and the append: one hop to a thread per batch.
    placed = await asyncio.to_thread(_write, settings.archive_directory(), name, items)
    return [
        {
            "message_id": item.message_id,
            "campaign_id": item.campaign_id,
            "subscriber_id": item.subscriber_id,
            "path": name,
            "frame_offset": frame.offset,
            "frame_length": frame.length,
            "start": start,
            "size": len(item.data),
            "sha256": key,
            "created_at": now,
        }
        for item, (frame, start, key) in zip(items, placed, strict=True)
    ]


def _write(directory: Path, name: str, items: Sequence[Built]) -> list[tuple[Frame, int, str]]:
    """(frame, start in it, SHA-256) of each item, appended to the day file."""
    keys = [sha256(item.data) for item in items]
    packed = dayfiles.pack([item.data for item in items])
    frames = dayfiles.append(directory, name, [frame.data for frame in packed])
    places = [
        (frame, start)
        for frame, packed_frame in zip(frames, packed, strict=True)
        for start, _ in packed_frame.places
    ]
    return [(frame, start, key) for (frame, start), key in zip(places, keys, strict=True)]


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


def _insert(session: AsyncSession, table: sa.Table) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


_CHANGED = ("path", "frame_offset", "frame_length", "start", "size", "sha256", "created_at")
_PER_ROW = (
    "message_id",
    "campaign_id",
    "subscriber_id",
    "frame_offset",
    "frame_length",
    "start",
    "size",
    "sha256",
)
"""The columns that differ between the rows of one batch; `path` and `created_at` are the
same for all of them."""


async def _upsert(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert the index rows; a campaign message archived again replaces its row."""
    postgresql = session.get_bind().dialect.name == "postgresql"
    for keys, group in (
        (("message_id",), [row for row in rows if row["message_id"] is not None]),
        (("campaign_id", "subscriber_id"), [row for row in rows if row["message_id"] is None]),
    ):
        if group and postgresql:
            await session.execute(_unnest_upsert(keys), _arrays(group))
        elif group:
            table = cast(sa.Table, ArchivedMessage.__table__)
            statement = sqlite_insert(table)
            set_ = {column: getattr(statement.excluded, column) for column in _CHANGED}
            await session.execute(
                statement.on_conflict_do_update(index_elements=keys, set_=set_), group
            )


@functools.cache
def _unnest_upsert(keys: tuple[str, ...]) -> Any:
    """PostgreSQL: the whole batch as one statement over arrays, one per column (`unnest`):
    one execution instead of one per row, and the same statement every time."""
    table = cast(sa.Table, ArchivedMessage.__table__)
    arrays = [sa.bindparam(name, type_=pg_array(table.c[name].type)) for name in _PER_ROW]
    batch = sa.func.unnest(*arrays).table_valued(*_PER_ROW).render_derived(name="batch")
    rows = sa.select(
        *(batch.c[name] for name in _PER_ROW),
        sa.bindparam("path", type_=table.c.path.type),
        sa.bindparam("created_at", type_=table.c.created_at.type),
    )
    statement = pg_insert(table).from_select([*_PER_ROW, "path", "created_at"], rows)
    set_ = {column: statement.excluded[column] for column in _CHANGED}
    return statement.on_conflict_do_update(index_elements=list(keys), set_=set_)


def _arrays(rows: list[dict[str, Any]]) -> dict[str, Any]:
    # The rows of one `_written` call: one day file, one instant.
    values: dict[str, Any] = {name: [row[name] for row in rows] for name in _PER_ROW}
    values["path"] = rows[0]["path"]
    values["created_at"] = rows[0]["created_at"]
    return values


async def raw_message(session: AsyncSession, settings: Settings, message_id: int) -> bytes:
    """The archived bytes of a transactional message, or NotFound."""
    where = ArchivedMessage.message_id == message_id
    what = f"message {message_id}"
    try:
        return await _raw(session, settings, where, what)
    except NotFound:
        created = await session.scalar(
            sa.select(Message.created_at).where(Message.id == message_id)
        )
        _expired(settings, created, what)
        raise


async def raw_campaign_message(
    session: AsyncSession, settings: Settings, campaign_id: int, subscriber_id: int
) -> bytes:
    """The archived bytes of a campaign's message to a subscriber, or NotFound."""
    where = sa.and_(
        ArchivedMessage.campaign_id == campaign_id, ArchivedMessage.subscriber_id == subscriber_id
    )
    what = f"the message of campaign {campaign_id} to subscriber {subscriber_id}"
    try:
        return await _raw(session, settings, where, what)
    except NotFound:
        sent = await session.scalar(
            sa.select(sa.func.max(sa.func.coalesce(Send.sent_at, Send.updated_at))).where(
                Send.campaign_id == campaign_id, Send.subscriber_id == subscriber_id
            )
        )
        _expired(settings, sent, what)
        raise


def _expired(settings: Settings, sent: datetime | None, what: str) -> None:
    """Raise Expired if a message that was sent is older than the archive keeps messages."""
    days = settings.retention_messages
    if sent is not None and days > 0 and sent < utcnow() - timedelta(days=days):
        raise Expired(
            f"{what} is older than the archive keeps messages "
            f"(WARTA_RETENTION_MESSAGES = {days} days): its bytes were deleted"
        )


class Expired(DomainError):
    """The message existed, but retention has deleted its bytes."""

    status = 410
    title = "Gone"


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
                    ArchivedMessage.frame_offset,
                    ArchivedMessage.frame_length,
                    ArchivedMessage.sha256,
                    ArchivedMessage.start,
                    ArchivedMessage.size,
                ).where(where)
            )
        ).first()
        if found is None:
            raise NotFound(f"{what} is not in the archive (never archived, expired or erased)")
        frame = Frame(found[0], found[1], found[2])
        try:
            data = await asyncio.to_thread(
                _read, settings.archive_directory(), frame, found[4], found[5]
            )
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


def _read(directory: Path, frame: Frame, start: int, size: int) -> bytes:
    return dayfiles.read(directory, frame)[start : start + size]


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
