"""The MTA's outcomes written back: one writer for campaign rows and messages alike."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.bounces.classify import classifier
from app.bounces.outcomes import Context, LedgerOutcomes
from app.bounces.service import Policy
from app.core.settings import Settings
from app.mail import identity
from app.mail.identity import Kind
from app.models import (
    Bounce,
    Campaign,
    Event,
    Message,
    MessageStatus,
    Send,
    SendStatus,
    Suppression,
)
from campaigns import ledger
from tests.helpers.api import eventually
from tests.helpers.seeding import seed_campaign

Sessions = async_sessionmaker[AsyncSession]
GONE = "550 5.1.1 <gone@example.com>: User unknown"


async def _campaign_rows(sessionmaker: Sessions) -> list[Send]:
    campaign_id, _ = await seed_campaign(sessionmaker, 4)
    async with sessionmaker() as session:
        campaign = await session.get_one(Campaign, campaign_id)
        await ledger.freeze_audience(session, campaign)
        await session.execute(sa.update(Send).values(status=SendStatus.sent))
        await session.commit()
        return list((await session.scalars(sa.select(Send).order_by(Send.id))).all())


async def _messages(sessionmaker: Sessions, *addresses: str) -> list[Message]:
    async with sessionmaker() as session:
        rows = [
            Message(
                status=MessageStatus.sent,
                from_email="shop@example.com",
                to_email=address,
                last_reply="250 2.0.0 queued",
                attempts=1,
            )
            for address in addresses
        ]
        session.add_all(rows)
        await session.commit()
        return rows


async def test_every_kind_takes_the_same_path(sessionmaker: Sessions, settings: Settings) -> None:
    sends = await _campaign_rows(sessionmaker)
    messages = await _messages(
        sessionmaker, "m0@example.com", "m1@example.com", "m2@example.com", "m3@example.com"
    )
    secret = settings.effective_secret_key()
    sink = LedgerOutcomes(
        sessionmaker, secret, Context(Policy.from_settings(settings), classifier())
    )

    def verp(kind: Kind, row_id: int) -> str:
        return identity.verp_address(secret, row_id, settings.bounce_domain, kind)

    replies = {
        "delivered": "250 2.0.0 OK from mx",
        "deferred": "451 4.7.1 greylisted",
        "failed": GONE,
        "deleted": "removed by the operator",
    }
    for (word, reply), send in zip(replies.items(), sends, strict=True):
        await sink(verp(Kind.CAMPAIGN, send.id), send.email, word, reply)
    for (word, reply), message in zip(replies.items(), messages, strict=True):
        await sink(verp(Kind.MESSAGE, message.id), message.to_email, word, reply)
    # A test send has no row, and a forged or foreign return path names none.
    await sink(verp(Kind.TEST, 10**15), "t@example.com", "failed", GONE)
    await sink(f"bounces+m{messages[0].id}-forged@{settings.bounce_domain}", "x", "failed", GONE)
    await sink.close()

    async with sessionmaker() as session:
        send_rows = [await session.get_one(Send, send.id) for send in sends]
        message_rows = [await session.get_one(Message, message.id) for message in messages]
        bounces = (await session.scalars(sa.select(Bounce).order_by(Bounce.id))).all()
        events = (await session.execute(sa.select(Event).order_by(Event.id))).scalars().all()
        suppressed = set((await session.scalars(sa.select(Suppression.address))).all())
    # A deferral or a deletion leaves the row `sent` and only refreshes its last reply.
    assert [(row.status, row.last_reply) for row in send_rows] == [
        (SendStatus.delivered, replies["delivered"]),
        (SendStatus.sent, replies["deferred"]),
        (SendStatus.bounced, GONE),
        (SendStatus.sent, replies["deleted"]),
    ]
    assert [(row.status, row.last_reply) for row in message_rows] == [
        (MessageStatus.delivered, replies["delivered"]),
        (MessageStatus.sent, replies["deferred"]),
        (MessageStatus.bounced, GONE),
        (MessageStatus.sent, replies["deleted"]),
    ]
    # One bounce record per failure, naming its row; the address is suppressed either way.
    assert [(b.send_id, b.message_id, b.source) for b in bounces] == [
        (sends[2].id, None, "smtp"),
        (None, messages[2].id, "smtp"),
    ]
    assert {sends[2].email, "m2@example.com"} <= suppressed
    by_row = {(e.send_id, e.message_id): e for e in events if e.kind == "bounced"}
    assert set(by_row) == {(sends[2].id, None), (None, messages[2].id)}
    # A bounced event is the bounce record's, with its class, whatever the kind of row.
    for event in by_row.values():
        assert {"bounce_id", "class", "kind", "status"} <= set(event.data)
    others = {(e.kind, e.send_id, e.message_id) for e in events if e.kind != "bounced"}
    assert others == {
        ("delivered", sends[0].id, None),
        ("deferred", sends[1].id, None),
        ("delivered", None, messages[0].id),
        ("deferred", None, messages[1].id),
    }


async def test_a_batch_the_database_refused_once_is_written_at_the_next_flush(
    sessionmaker: Sessions, engine: AsyncEngine, settings: Settings
) -> None:
    # A deadlock with a worker writing the same rows aborts the transaction: its outcomes
    # must not be lost (the rows would stay `sent` for ever, the campaign never settled).
    sends = await _campaign_rows(sessionmaker)
    secret = settings.effective_secret_key()
    sink = LedgerOutcomes(
        sessionmaker, secret, Context(Policy.from_settings(settings), classifier())
    )
    refusals = [DBAPIError("UPDATE sends", None, Exception("deadlock detected"))]

    def refuse_once(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("UPDATE sends") and refusals:
            raise refusals.pop()

    async def statuses() -> list[SendStatus]:
        async with sessionmaker() as session:
            return list((await session.scalars(sa.select(Send.status).order_by(Send.id))).all())

    async def all_delivered() -> bool:
        return await statuses() == [SendStatus.delivered] * len(sends)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", refuse_once)
    try:
        for send in reversed(sends):  # not in id order: the writer sorts them
            verp = identity.verp_address(secret, send.id, settings.bounce_domain, Kind.CAMPAIGN)
            await sink(verp, send.email, "delivered", "250 2.0.0 ok")
        # The background flush meets the refusal, then writes the batch at a later tick.
        await eventually(all_delivered, 10, "every outcome written")
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", refuse_once)
        await sink.close()
    assert not refusals  # the first write was refused
    async with sessionmaker() as session:
        delivered = await session.scalar(
            sa.select(sa.func.count()).select_from(Event).where(Event.kind == "delivered")
        )
    assert delivered == len(sends)  # written once: the refused transaction left nothing
