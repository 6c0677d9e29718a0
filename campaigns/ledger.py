"""The send ledger: freezing an audience, claiming rows, recording attempts and deliveries
in bulk (the same `record_attempts` / `record_delivery` as transactional messages)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience.segments import segment_filter
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
from app.models import Campaign, EventKind, Send, SendStatus, Subscriber, utcnow
from campaigns.audience import audience_filter

logger = logging.getLogger(__name__)

BATCH_SPAN = 500  # ledger ids per batch job
ANALYZE_LOCK_TIMEOUT = "2s"
"""How long a campaign start waits for a table's ANALYZE lock before it goes on without."""
PLANNED_TABLES = ("subscribers", "subscriptions", "sends")
"""The tables every chunk of a campaign reads by id (the eligibility check, the ledger)."""
SETTLED_BY_MTA = (SendStatus.delivered, SendStatus.bounced, SendStatus.complained)
EVENT_REPLY_CHARS = 300  # of the reply in each event: a campaign writes millions of them
_FINAL = frozenset({Verdict.DELIVERED, Verdict.BOUNCED, Verdict.COMPLAINED})
_EVENT_OF = {
    Verdict.SENT: EventKind.sent,
    Verdict.DEFERRED: EventKind.deferred,
    Verdict.FAILED: EventKind.failed,
    Verdict.DELIVERED: EventKind.delivered,
    Verdict.BOUNCED: EventKind.bounced,
    Verdict.COMPLAINED: EventKind.complained,
}
"""The event each verdict writes; a skipped row and a deletion write none."""


async def freeze_audience(session: AsyncSession, campaign: Campaign) -> tuple[int, int]:
    """Write one pending row per eligible subscriber; returns (count, lowest ledger id)."""
    segment = segment_filter(campaign.segment) if campaign.segment else None
    now = utcnow()
    recipients = (
        sa.select(
            sa.literal(campaign.id),
            Subscriber.id,
            Subscriber.email,
            sa.literal(SendStatus.pending.value),
            sa.literal(0),
            sa.literal(""),
            sa.literal(now, type_=Send.updated_at.type),
        )
        .where(*audience_filter(campaign.id, segment))
        .order_by(Subscriber.id)
    )
    await session.execute(
        sa.insert(Send).from_select(
            [
                "campaign_id",
                "subscriber_id",
                "email",
                "status",
                "attempts",
                "last_reply",
                "updated_at",
            ],
            recipients,
        )
    )
    count, base = (
        await session.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.min(Send.id), 0)).where(
                Send.campaign_id == campaign.id
            )
        )
    ).one()
    await _analyze_if_stale(session, int(count))
    return int(count), int(base)


async def _analyze_if_stale(session: AsyncSession, audience: int) -> None:
    """ANALYZE the tables a campaign's chunks read when PostgreSQL's statistics predate the
    audience (a list just imported, a ledger just frozen).

    Without them the planner took a chunk's eligibility check (100 subscribers by id) for a
    scan of the whole list's memberships: ~200 ms a chunk instead of ~0.4 ms, for the first
    minute of a campaign until autovacuum analyzed. A table counts as stale when it was never
    analyzed or holds fewer rows than the audience as the planner last knew it. ANALYZE sees
    this transaction's own rows; its statistics apply once the start commits.
    """
    if not on_postgresql(session) or audience == 0:
        return
    rows = await session.execute(
        sa.text(
            "select relname, reltuples from pg_class "
            "where oid in (select to_regclass(name) from unnest(cast(:names as text[])) name)"
        ),
        {"names": list(PLANNED_TABLES)},
    )
    known = {str(name): float(tuples) for name, tuples in rows}
    # reltuples is -1 for a table never analyzed.
    stale = [name for name in PLANNED_TABLES if name in known and known[name] < audience]
    if not stale:
        return
    # ANALYZE waits for any VACUUM of its table (an anti-wraparound one is not cancelled for
    # it): the start must not hang on an optimisation, so each waits a bounded time, in a
    # savepoint so that a timeout leaves the start's transaction usable.
    previous = await session.scalar(sa.text("select current_setting('lock_timeout')"))
    await session.execute(
        sa.text("select set_config('lock_timeout', :wait, true)"), {"wait": ANALYZE_LOCK_TIMEOUT}
    )
    try:
        # In one order, so that two campaigns starting at once wait rather than deadlock.
        for name in stale:
            try:
                async with session.begin_nested():
                    await session.execute(sa.text(f"analyze {name}"))
            except sa.exc.DBAPIError as exc:
                logger.warning("campaign start: %s not analyzed (%s); going on without", name, exc)
    finally:
        await session.execute(
            sa.text("select set_config('lock_timeout', :wait, true)"), {"wait": previous}
        )


def batch_range(base: int, index: int) -> tuple[int, int]:
    """The inclusive ledger id range of batch `index`."""
    low = base + index * BATCH_SPAN
    return low, low + BATCH_SPAN - 1


async def ranges_with_work(
    session: AsyncSession, campaign_id: int, base: int, now: datetime
) -> list[tuple[int, int]]:
    """Ranges that still hold rows to send: pending, in flight, or deferred and due."""
    index = (Send.id - base) // BATCH_SPAN
    query = (
        sa.select(index)
        .where(Send.campaign_id == campaign_id, _due(now))
        .distinct()
        .order_by(index)
    )
    return [batch_range(base, int(i)) for i in (await session.scalars(query)).all()]


def _due(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        Send.status.in_((SendStatus.pending, SendStatus.sending)),
        sa.and_(Send.status == SendStatus.deferred, Send.next_attempt_at <= now),
    )


async def rows_to_send(
    session: AsyncSession, campaign_id: int, low: int, high: int, now: datetime
) -> list[tuple[int, int | None, str, int]]:
    """(ledger id, subscriber id, email, attempts) of the rows in range that need an attempt.

    Rows still marked `sending` were claimed by an attempt of this very batch that died (a
    batch id runs on one worker at a time): they are sent again with the same Message-ID,
    which the MTA recognises.
    """
    result = await session.execute(
        sa.select(Send.id, Send.subscriber_id, Send.email, Send.attempts)
        .where(Send.campaign_id == campaign_id, Send.id.between(low, high), _due(now))
        .order_by(Send.id)
    )
    return [(row[0], row[1], row[2], row[3]) for row in result]


async def mark_sending(session: AsyncSession, send_ids: Sequence[int]) -> set[int]:
    """Claim rows just before their messages leave; returns the ids claimed.

    A row the MTA settled since the batch read it (a dead worker's earlier submission was
    delivered meanwhile) is not claimed: its final word must not turn back into `sending`.
    """
    if not send_ids:
        return set()
    claimed = await session.scalars(
        sa.update(Send)
        .where(Send.id.in_(send_ids), Send.status.not_in(SETTLED_BY_MTA))
        .values(status=SendStatus.sending, updated_at=utcnow())
        .returning(Send.id)
    )
    return set(claimed.all())


def _by_id(**values: Any) -> sa.Update:
    """UPDATE sends SET … WHERE id = :b_id, for executemany over many rows."""
    table = cast(sa.Table, Send.__table__)
    return (
        sa.update(table)
        .where(table.c.id == sa.bindparam("b_id"))
        .values(updated_at=utcnow(), **values)
    )


_UNNEST_ATTEMPTS = sa.text(
    "UPDATE sends SET "
    "status = CASE WHEN sends.status = ANY(CAST(:settled AS text[])) THEN sends.status "
    "ELSE new.status END, "
    "last_reply = CASE WHEN sends.status = ANY(CAST(:settled AS text[])) "
    "THEN sends.last_reply ELSE new.reply END, "
    "next_attempt_at = new.next_attempt_at, sent_at = new.sent_at, "
    "attempts = sends.attempts + new.inc, updated_at = :now "
    "FROM UNNEST(CAST(:id AS bigint[]), CAST(:status AS text[]), CAST(:reply AS text[]), "
    "CAST(:next_attempt_at AS timestamptz[]), CAST(:sent_at AS timestamptz[]), "
    "CAST(:inc AS integer[])) AS new (id, status, reply, next_attempt_at, sent_at, inc) "
    "WHERE sends.id = new.id"
)
_UNNEST_DELIVERIES = sa.text(
    "UPDATE sends SET status = COALESCE(new.status, sends.status), last_reply = new.reply, "
    "updated_at = :now "
    "FROM UNNEST(CAST(:id AS bigint[]), CAST(:status AS text[]), CAST(:reply AS text[])) "
    "AS new (id, status, reply) "
    "WHERE sends.id = new.id "
    "RETURNING sends.id, sends.email, sends.campaign_id, sends.subscriber_id"
)
"""PostgreSQL: a batch of the engine's attempts, or of the MTA's words, as one UPDATE over
arrays (one column each) instead of an executemany that runs the UPDATE once per row. The
rows are locked in id order first (`app.core.row_batches`)."""
_SENDS = cast(sa.Table, Send.__table__)


async def lock_rows(session: AsyncSession, ids: Sequence[int]) -> None:
    """Lock ledger rows in id order in the caller's transaction (PostgreSQL; SQLite has one
    writer), before several statements write them."""
    if ids and on_postgresql(session):
        await lock_in_id_order(session, _SENDS, sorted(set(ids)))


async def record_attempts(session: AsyncSession, attempts: Sequence[Attempt]) -> None:
    """Write a batch of the engine's attempts in one statement, with their events."""
    if not attempts:
        return
    now = utcnow()
    # The MTA may have reported the message delivered (or bounced) before this batch's
    # write arrives: its word is final, the engine's `sent` must not undo it.
    params: list[dict[str, Any]] = [
        {
            "b_id": item.row.row_id,
            "b_status": SendStatus(item.verdict.value).value,
            "b_reply": item.reply[:1000],
            "b_next": item.next_attempt_at,
            "b_sent": now if item.verdict is Verdict.SENT else None,
            "b_inc": 0 if item.verdict is Verdict.SKIPPED else 1,
        }
        for item in sorted(attempts, key=lambda item: item.row.row_id)  # lock order: by id
    ]
    if on_postgresql(session):
        params = one_per_row(params, summed=("b_inc",))
        await lock_in_id_order(session, _SENDS, [p["b_id"] for p in params])
        await session.execute(
            _UNNEST_ATTEMPTS,
            {
                **arrays(params, ATTEMPT_ARRAYS),
                "settled": [status.value for status in SETTLED_BY_MTA],
                "now": now,
            },
        )
    else:
        table = cast(sa.Table, Send.__table__)
        # (OR of equalities: an IN list would be an expanding parameter, which executemany
        # refuses.)
        settled = sa.or_(
            *(table.c.status == sa.literal(s.value, sa.String) for s in SETTLED_BY_MTA)
        )
        statement = _by_id(
            status=sa.case((settled, table.c.status), else_=sa.bindparam("b_status")),
            last_reply=sa.case((settled, table.c.last_reply), else_=sa.bindparam("b_reply")),
            next_attempt_at=sa.bindparam("b_next", type_=Send.next_attempt_at.type),
            sent_at=sa.bindparam("b_sent", type_=Send.sent_at.type),
            attempts=table.c.attempts + sa.bindparam("b_inc"),
        )
        await session.execute(statement, params)
    await record_events(
        session,
        [
            item.row.event(_EVENT_OF[item.verdict], reply=item.reply[:EVENT_REPLY_CHARS])
            for item in attempts
            if item.verdict in _EVENT_OF
        ],
    )


async def record_delivery(
    session: AsyncSession, deliveries: Sequence[Delivery], *, events: bool = True
) -> None:
    """The later word on rows: delivered, bounced or complained is final; a deferral or a
    deletion only refreshes the last reply (the MTA still holds, or dropped, the message).

    With `events`, each word but a deletion is also an event (the bounce service writes its
    own, with the class, and turns them off). Unknown ids are ignored.
    """
    # One statement over the rows in id order (a deferral keeps the status): the worker's
    # `record_attempts` locks rows in id order too, so the two never wait for each other in
    # a cycle (a deadlock aborted a batch of outcomes).
    words: list[dict[str, Any]] = [
        {
            "b_id": item.row_id,
            "b_status": item.verdict.value if item.verdict in _FINAL else None,
            "b_reply": item.reply[:1000],
        }
        for item in sorted(deliveries, key=lambda item: item.row_id)
    ]
    if not words:
        return
    eventful = [item for item in deliveries if item.verdict in _EVENT_OF] if events else []
    if on_postgresql(session):
        # The UPDATE returns the rows the events name: no second read of them.
        words = one_per_row(words, kept=("b_status",))
        await lock_in_id_order(session, _SENDS, [w["b_id"] for w in words])
        updated = await session.execute(
            _UNNEST_DELIVERIES,
            {
                **arrays(words, DELIVERY_ARRAYS),
                "now": utcnow(),
            },
        )
        rows = {int(row.id): _row(row) for row in updated}
    else:
        table = cast(sa.Table, Send.__table__)
        status = sa.func.coalesce(sa.bindparam("b_status", type_=sa.String), table.c.status)
        await session.execute(_by_id(status=status, last_reply=sa.bindparam("b_reply")), words)
        rows = await ledger_rows(session, [item.row_id for item in eventful])
    if not eventful:
        return
    await record_events(
        session,
        [
            rows[item.row_id].event(_EVENT_OF[item.verdict], reply=item.reply[:EVENT_REPLY_CHARS])
            for item in eventful
            if item.row_id in rows
        ],
    )


_ROW_COLUMNS = (Send.id, Send.email, Send.campaign_id, Send.subscriber_id)


def _row(row: Any) -> LedgerRow:
    return LedgerRow(Kind.CAMPAIGN, int(row.id), str(row.email), row.campaign_id, row.subscriber_id)


async def ledger_rows(session: AsyncSession, ids: Sequence[int]) -> dict[int, LedgerRow]:
    """Ledger rows by id, as reports and events name them."""
    if not ids:
        return {}
    rows = await session.execute(sa.select(*_ROW_COLUMNS).where(Send.id.in_(sorted(set(ids)))))
    return {int(row.id): _row(row) for row in rows}


async def latest_row(
    session: AsyncSession, email: str, campaign_id: int | None = None
) -> LedgerRow | None:
    """The most recent ledger row for an address (in one campaign, if given)."""
    query = sa.select(*_ROW_COLUMNS).where(Send.email == email.lower())
    if campaign_id is not None:
        query = query.where(Send.campaign_id == campaign_id)
    row = (await session.execute(query.order_by(Send.id.desc()).limit(1))).first()
    return _row(row) if row is not None else None


async def status_counts(session: AsyncSession, campaign_id: int) -> dict[str, int]:
    """Ledger rows per status."""
    rows = await session.execute(
        sa.select(Send.status, sa.func.count())
        .where(Send.campaign_id == campaign_id)
        .group_by(Send.status)
    )
    return {str(status): int(count) for status, count in rows}
