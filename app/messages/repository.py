"""Messages: claiming rows to send, recording attempts and the MTA's word, with their events
(the same `record_attempts` / `record_delivery` as the campaign ledger)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience.suppression_scopes import scopes_for
from app.core.database import on_postgresql
from app.core.events import record_events
from app.core.row_batches import (
    ATTEMPT_ARRAYS,
    DELIVERY_ARRAYS,
    arrays,
    lock_in_id_order,
    one_per_row,
)
from app.mail.identity import Kind
from app.mail.recording import Attempt, Delivery, LedgerRow, Verdict
from app.models import (
    SENDABLE_STATUSES,
    Event,
    EventKind,
    Message,
    MessageStatus,
    MessageStream,
    SuppressionScope,
    utcnow,
)

# What the MTA's final word may replace: a complaint is never overwritten, and nothing goes
# back to `delivered` once the recipient's server has bounced or complained.
_REPLACEABLE: dict[MessageStatus, tuple[MessageStatus, ...]] = {
    MessageStatus.delivered: (MessageStatus.queued, MessageStatus.sent, MessageStatus.deferred),
    MessageStatus.bounced: (
        MessageStatus.queued,
        MessageStatus.sent,
        MessageStatus.deferred,
        MessageStatus.delivered,
    ),
    MessageStatus.failed: (MessageStatus.queued, MessageStatus.sent, MessageStatus.deferred),
    MessageStatus.complained: (
        MessageStatus.queued,
        MessageStatus.sent,
        MessageStatus.deferred,
        MessageStatus.delivered,
    ),
}
_EVENT_OF = {
    MessageStatus.delivered: EventKind.delivered,
    MessageStatus.bounced: EventKind.bounced,
    MessageStatus.failed: EventKind.failed,
    MessageStatus.complained: EventKind.complained,
    MessageStatus.sent: EventKind.sent,
    MessageStatus.deferred: EventKind.deferred,
    MessageStatus.suppressed: EventKind.suppressed,
}
_FINAL = frozenset({Verdict.DELIVERED, Verdict.BOUNCED, Verdict.COMPLAINED})
SETTLED_BY_MTA = (MessageStatus.delivered, MessageStatus.bounced, MessageStatus.complained)
"""Statuses only the MTA's later word sets: the worker's record of its hand-over, which can
arrive after that word, leaves them (and their reply) as they are."""
_MESSAGES = cast(sa.Table, Message.__table__)


def status_of(verdict: Verdict) -> MessageStatus:
    """A verdict as a message status: a message not sent to a suppressed address is `suppressed`."""
    return MessageStatus.suppressed if verdict is Verdict.SKIPPED else MessageStatus(verdict.value)


@dataclass(frozen=True)
class Claimed:
    """A message a worker holds the lease on and may submit now."""

    id: int
    to_email: str
    mime: bytes
    attempts: int
    stream: MessageStream

    @property
    def row(self) -> LedgerRow:
        """The message as the row its attempts are recorded on."""
        return LedgerRow(Kind.MESSAGE, self.id, self.to_email)


async def claim(
    session: AsyncSession,
    ids: Sequence[int],
    token: str,
    now: datetime,
    lease: timedelta,
    extra: int = 0,
) -> list[Claimed]:
    """Take the lease on the messages of `ids` that are due and not held by another worker,
    and on up to `extra` other queued ones (a burst of requests is then sent in batches).

    A conditional UPDATE decides, so two workers never both hold one message.
    """
    # One Core statement on the table (no ORM bulk-update machinery, one round trip): on
    # a busy worker every round trip waits a turn of its event loop.
    table = cast(sa.Table, Message.__table__)
    c = table.c
    free = sa.or_(c.lease_until.is_(None), c.lease_until < now)
    wanted = []
    if ids:
        due = sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now)
        wanted.append(sa.and_(c.id.in_(ids), c.status.in_(SENDABLE_STATUSES), due))
    if extra > 0:
        others = (
            sa.select(c.id)
            .where(c.status == MessageStatus.queued, free)
            .order_by(c.id)
            .limit(extra)
            .with_for_update(skip_locked=True)  # PostgreSQL: never wait for another job's rows
            .scalar_subquery()
        )
        wanted.append(sa.and_(c.id.in_(others), c.status == MessageStatus.queued))
    if not wanted:
        return []
    found = await session.execute(
        sa.update(table)
        .where(sa.or_(*wanted), free)
        .values(lease_token=token, lease_until=now + lease)
        .returning(c.id, c.to_email, c.mime, c.attempts, c.stream)
    )
    claimed = [Claimed(row[0], row[1], row[2], row[3], MessageStream(row[4])) for row in found]
    return sorted(claimed, key=lambda row: row.id)


async def insert(session: AsyncSession, values: Sequence[dict[str, Any]]) -> list[int]:
    """Insert message rows in one multi-row INSERT … RETURNING; their ids, in order."""
    table = cast(sa.Table, Message.__table__)
    columns = {"meta": "metadata"}  # the attribute's column name
    result = await session.execute(
        sa.insert(table).returning(table.c.id, sort_by_parameter_order=True),
        [{columns.get(k, k): v for k, v in row.items()} for row in values],
    )
    return [int(row_id) for row_id in result.scalars()]


async def allocate_ids(session: AsyncSession, count: int) -> list[int] | None:
    """`count` new message ids from the sequence (PostgreSQL, one query), or None where ids
    come only from the INSERT (SQLite)."""
    if not on_postgresql(session):
        return None
    sequence = sa.func.pg_get_serial_sequence(Message.__tablename__, "id")
    result = await session.scalars(
        sa.select(sa.func.nextval(sequence)).select_from(sa.func.generate_series(1, count))
    )
    return [int(row_id) for row_id in result]


async def insert_with_ids(
    session: AsyncSession,
    values: Sequence[dict[str, Any]],
    ids: Sequence[int],
    built: Sequence[dict[str, Any]],
) -> None:
    """Insert message rows under the `ids` allocated for them (PostgreSQL), each with its
    built message (`built` as for `set_built`, for the rows that have one), in one INSERT
    over arrays: one execution for the group, not one per row."""
    by_id = {item["b_id"]: item for item in built}
    rows = []
    for row_id, row in zip(ids, values, strict=True):
        record = {**row, "id": row_id}
        if (done := by_id.get(row_id)) is not None:
            record.update(status=done["b_status"], last_reply=done["b_reply"], mime=done["b_mime"])
        rows.append(record)
    arrays = {name: [row[name] for row in rows] for name in _INSERTED}
    arrays["meta"] = [json.dumps(meta) for meta in arrays["meta"]]
    await session.execute(_UNNEST_INSERT, arrays)


_INSERTED = (
    "id", "stream", "status", "api_key_id", "from_email", "to_email", "subject", "tags",
    "meta", "mime", "attempts", "last_reply", "created_at", "updated_at",
)  # fmt: skip
_UNNEST_INSERT = sa.text(
    "INSERT INTO messages (id, stream, status, api_key_id, from_email, to_email, subject, "
    "tags, metadata, mime, attempts, last_reply, created_at, updated_at) "
    "SELECT id, stream, status, api_key_id, from_email, to_email, subject, tags, "
    "CAST(meta AS jsonb), mime, attempts, last_reply, created_at, updated_at FROM UNNEST("
    "CAST(:id AS bigint[]), CAST(:stream AS text[]), CAST(:status AS text[]), "
    "CAST(:api_key_id AS integer[]), CAST(:from_email AS text[]), CAST(:to_email AS text[]), "
    "CAST(:subject AS text[]), CAST(:tags AS text[]), CAST(:meta AS text[]), "
    "CAST(:mime AS bytea[]), CAST(:attempts AS integer[]), CAST(:last_reply AS text[]), "
    "CAST(:created_at AS timestamptz[]), CAST(:updated_at AS timestamptz[])) "
    "AS new (id, stream, status, api_key_id, from_email, to_email, subject, tags, meta, mime, "
    "attempts, last_reply, created_at, updated_at)"
)
"""PostgreSQL: a group's message rows as one statement over arrays (one column each)."""


async def set_built(session: AsyncSession, built: Sequence[dict[str, Any]]) -> None:
    """Store each built message (`b_id`, `b_status`, `b_reply`, `b_mime`) in one executemany."""
    if not built:
        return
    table = cast(sa.Table, Message.__table__)
    await session.execute(
        sa.update(table)
        .where(table.c.id == sa.bindparam("b_id"))
        .values(
            status=sa.bindparam("b_status"),
            last_reply=sa.bindparam("b_reply"),
            mime=sa.bindparam("b_mime"),
        ),
        list(built),
    )


async def suppressed_now(session: AsyncSession, claimed: Sequence[Claimed]) -> set[int]:
    """The claimed messages whose recipient was suppressed (for their stream) since they were
    accepted: suppression is checked again at send, as for campaigns."""
    if not claimed:
        return set()
    scopes = await scopes_for(session, {row.to_email for row in claimed})
    return {
        row.id
        for row in claimed
        if scopes.get(row.to_email, set()) & {SuppressionScope.all.value, row.stream.value}
    }


async def lock_rows(session: AsyncSession, ids: Sequence[int]) -> None:
    """Lock messages in id order in the caller's transaction (PostgreSQL; SQLite has one
    writer), before several statements write them."""
    if ids and on_postgresql(session):
        await lock_in_id_order(session, _MESSAGES, sorted(set(ids)))


async def record_attempts(
    session: AsyncSession, attempts: Sequence[Attempt], *, lease: str
) -> None:
    """Write each attempt, release the `lease` and record the events.

    The MTA may have reported a message delivered (or bounced) before this record of its
    hand-over arrives: that word is final, and the worker's `sent` does not undo it.
    """
    if not attempts:
        return
    now = utcnow()
    params: list[dict[str, Any]] = [
        {
            "b_id": item.row.row_id,
            "b_status": status_of(item.verdict).value,
            "b_reply": item.reply[:1000],
            "b_next": item.next_attempt_at,
            "b_sent": now if item.verdict is Verdict.SENT else None,
            "b_inc": 0 if item.verdict is Verdict.SKIPPED else 1,
        }
        for item in sorted(attempts, key=lambda item: item.row.row_id)  # lock order: by id
    ]
    if on_postgresql(session):
        # One attempt a row (a job claims each row once): the first, as on SQLite, where the
        # first UPDATE releases the lease the next one would need.
        first: dict[int, dict[str, Any]] = {}
        for word in params:
            first.setdefault(word["b_id"], word)
        params = list(first.values())
        await lock_in_id_order(session, _MESSAGES, [p["b_id"] for p in params])
        await session.execute(
            _UNNEST_ATTEMPTS,
            {
                **arrays(params, ATTEMPT_ARRAYS),
                "settled": [status.value for status in SETTLED_BY_MTA],
                "lease": lease,
                "now": now,
            },
        )
    else:
        c = _MESSAGES.c
        # (OR of equalities: an IN list would be an expanding parameter, which executemany
        # refuses.)
        settled = sa.or_(*(c.status == sa.literal(s.value, sa.String) for s in SETTLED_BY_MTA))
        statement = (
            sa.update(_MESSAGES)
            .where(c.id == sa.bindparam("b_id"), c.lease_token == lease)
            .values(
                status=sa.case((settled, c.status), else_=sa.bindparam("b_status")),
                last_reply=sa.case((settled, c.last_reply), else_=sa.bindparam("b_reply")),
                next_attempt_at=sa.bindparam("b_next", type_=Message.next_attempt_at.type),
                sent_at=sa.bindparam("b_sent", type_=Message.sent_at.type),
                attempts=c.attempts + sa.bindparam("b_inc"),
                lease_token=None,
                lease_until=None,
                updated_at=now,
            )
        )
        await session.execute(statement, params)
    await record_events(
        session,
        [
            item.row.event(_EVENT_OF[status_of(item.verdict)], reply=item.reply[:1000])
            for item in attempts
        ],
    )


_UNNEST_ATTEMPTS = sa.text(
    "UPDATE messages SET "
    "status = CASE WHEN messages.status = ANY(CAST(:settled AS text[])) THEN messages.status "
    "ELSE new.status END, "
    "last_reply = CASE WHEN messages.status = ANY(CAST(:settled AS text[])) "
    "THEN messages.last_reply ELSE new.reply END, "
    "next_attempt_at = new.next_attempt_at, sent_at = new.sent_at, "
    "attempts = messages.attempts + new.inc, lease_token = NULL, lease_until = NULL, "
    "updated_at = :now "
    "FROM UNNEST(CAST(:id AS bigint[]), CAST(:status AS text[]), CAST(:reply AS text[]), "
    "CAST(:next_attempt_at AS timestamptz[]), CAST(:sent_at AS timestamptz[]), "
    "CAST(:inc AS integer[])) AS new (id, status, reply, next_attempt_at, sent_at, inc) "
    "WHERE messages.id = new.id AND messages.lease_token = :lease"
)
"""PostgreSQL: a job's attempts as one UPDATE over arrays, the rows locked in id order first."""


async def due(
    session: AsyncSession, now: datetime, queued_before: datetime, limit: int
) -> list[int]:
    """Messages no job seems to hold: queued for a while, or deferred and due again."""
    rows = await session.scalars(
        sa.select(Message.id)
        .where(
            sa.or_(
                sa.and_(Message.status == MessageStatus.queued, Message.created_at < queued_before),
                sa.and_(Message.status == MessageStatus.deferred, Message.next_attempt_at <= now),
            ),
            sa.or_(Message.lease_until.is_(None), Message.lease_until < now),
        )
        .order_by(Message.id)
        .limit(limit)
    )
    return list(rows.all())


async def record_delivery(
    session: AsyncSession, deliveries: Sequence[Delivery], *, events: bool = True
) -> None:
    """The later word on messages: delivered, bounced or complained replaces the status where
    `_REPLACEABLE` allows; a deferral or a deletion only refreshes the last reply (`sent`:
    the MTA still holds, or dropped, the message).

    With `events`, each word but a deletion is also an event (the bounce service writes its
    own, with the class, and turns them off). Unknown ids are ignored (a message may have
    been deleted).
    """
    if not deliveries:
        return
    ids = sorted({item.row_id for item in deliveries})
    # Read and locked in id order (PostgreSQL; SQLite has one writer): the status the
    # words are judged against is the one they replace.
    known = {
        row[0]: (row[1], MessageStatus(row[2]))
        for row in await session.execute(
            sa.select(Message.id, Message.to_email, Message.status)
            .where(Message.id.in_(ids))
            .order_by(Message.id)
            .with_for_update()
        )
    }
    table = cast(sa.Table, Message.__table__)
    now = utcnow()
    facts = []
    words: list[dict[str, Any]] = []
    for item in sorted(deliveries, key=lambda item: item.row_id):  # lock order: by id
        if item.row_id not in known:
            continue
        email, current = known[item.row_id]
        reply = item.reply[:1000]
        if item.verdict not in _FINAL:
            words.append({"b_id": item.row_id, "b_status": None, "b_reply": reply})
        else:
            status = status_of(item.verdict)
            if current in _REPLACEABLE.get(status, ()):
                words.append({"b_id": item.row_id, "b_status": status.value, "b_reply": reply})
                known[item.row_id] = (email, status)
        if item.verdict is not Verdict.DELETED:
            row = LedgerRow(Kind.MESSAGE, item.row_id, email)
            facts.append(row.event(_EVENT_OF[status_of(item.verdict)], reply=reply))
    if words and on_postgresql(session):
        # One statement over arrays, the rows locked in id order first, as the worker's
        # `record_attempts` locks them: two writers of the same rows never wait in a cycle.
        words = one_per_row(words, kept=("b_status",))
        await session.execute(
            _UNNEST_DELIVERIES,
            {
                **arrays(words, DELIVERY_ARRAYS),
                "now": now,
            },
        )
    elif words:
        new_status = sa.func.coalesce(sa.bindparam("b_status", type_=sa.String), table.c.status)
        await session.execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("b_id"))
            .values(status=new_status, last_reply=sa.bindparam("b_reply"), updated_at=now),
            words,
        )
    if events:
        await record_events(session, facts)


_UNNEST_DELIVERIES = sa.text(
    "UPDATE messages SET status = COALESCE(new.status, messages.status), "
    "last_reply = new.reply, updated_at = :now "
    "FROM UNNEST(CAST(:id AS bigint[]), CAST(:status AS text[]), CAST(:reply AS text[])) "
    "AS new (id, status, reply) WHERE messages.id = new.id"
)
"""PostgreSQL: the MTA's words on messages as one UPDATE over arrays (rows locked already)."""


async def ledger_rows(session: AsyncSession, ids: Sequence[int]) -> dict[int, LedgerRow]:
    """Messages by id, as the rows reports and events name."""
    if not ids:
        return {}
    rows = await session.execute(
        sa.select(Message.id, Message.to_email).where(Message.id.in_(sorted(set(ids))))
    )
    return {int(row_id): LedgerRow(Kind.MESSAGE, int(row_id), email) for row_id, email in rows}


async def timeline(session: AsyncSession, message_id: int) -> list[Event]:
    """The events of one message, oldest first."""
    rows = await session.scalars(
        sa.select(Event).where(Event.message_id == message_id).order_by(Event.id)
    )
    return list(rows.all())
