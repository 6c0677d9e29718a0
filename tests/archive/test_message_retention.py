"""WARTA_RETENTION_MESSAGES also clears the MIME that `messages` rows keep for sending, and
the raw routes say 410 Gone for a message whose bytes retention deleted."""

from __future__ import annotations

from datetime import timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive import retention, service
from app.archive.service import Built
from app.core.settings import Settings
from app.models import (
    ArchivedMessage,
    Campaign,
    Message,
    MessageStatus,
    Send,
    SendStatus,
    Subscriber,
    utcnow,
)

DAYS = 30  # the default WARTA_RETENTION_MESSAGES, which the app under test runs with
FINAL = (MessageStatus.sent, MessageStatus.delivered, MessageStatus.failed, MessageStatus.bounced)


async def test_old_finished_messages_lose_their_mime_and_unsent_ones_keep_it(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    now = utcnow()
    limit = timedelta(days=DAYS)
    expected: dict[int, bytes] = {}
    async with sessionmaker() as session:
        for n in range(20):
            status = FINAL[n % len(FINAL)]
            for age, cleared in (
                ((limit + timedelta(minutes=1 + n)), True),
                (
                    (limit - timedelta(minutes=1 + n)),
                    False,
                ),
            ):
                row = Message(
                    from_email="shop@example.com",
                    to_email=f"r{n}@example.com",
                    status=status,
                    mime=f"MIME {n} {cleared}".encode(),
                    created_at=now - age,
                )
                session.add(row)
                await session.flush()
                expected[row.id] = b"" if cleared else row.mime
        # Still to be sent, however old: the worker needs the bytes.
        for status in (MessageStatus.queued, MessageStatus.deferred):
            row = Message(
                from_email="shop@example.com",
                to_email="later@example.com",
                status=status,
                mime=b"still owed",
                created_at=now - 3 * limit,
            )
            session.add(row)
            await session.flush()
            expected[row.id] = b"still owed"
        await session.commit()
    config = settings.model_copy(update={"retention_messages": DAYS, "retention_batch": 7})
    report = await retention.enforce(sessionmaker, config, now)
    assert report.removed["message_mime"] == 20
    async with sessionmaker() as session:
        rows = {
            row[0]: row[1] for row in await session.execute(sa.select(Message.id, Message.mime))
        }
    assert rows == expected  # every row stays; only the old finished ones lost their MIME
    assert (await retention.enforce(sessionmaker, config, now)).removed["message_mime"] == 0


async def test_the_raw_routes_say_gone_for_a_message_retention_deleted(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    now = utcnow()
    old = now - timedelta(days=DAYS, hours=1)
    async with sessionmaker() as session:
        expired = Message(
            from_email="shop@example.com",
            to_email="a@example.com",
            status=MessageStatus.delivered,
            mime=b"To: a@example.com\r\n\r\nold\r\n",
            created_at=old,
        )
        recent = Message(
            from_email="shop@example.com",
            to_email="b@example.com",
            status=MessageStatus.delivered,
            mime=b"To: b@example.com\r\n\r\nnew\r\n",
        )
        campaign = Campaign(name="c", subject="s", from_email="news@example.com")
        subscriber = Subscriber(email="s@example.com", name="S")
        session.add_all([expired, recent, campaign, subscriber])
        await session.flush()
        session.add(
            Send(
                campaign_id=campaign.id,
                subscriber_id=subscriber.id,
                email="s@example.com",
                status=SendStatus.sent,
                sent_at=old,
            )
        )
        await session.commit()
        ids = expired.id, recent.id, campaign.id, subscriber.id
    expired_id, recent_id, campaign_id, subscriber_id = ids
    await service.store(
        sessionmaker,
        settings,
        [
            Built(b"To: a@example.com\r\n\r\nold\r\n", message_id=expired_id),
            Built(b"To: b@example.com\r\n\r\nnew\r\n", message_id=recent_id),
            Built(
                b"To: s@example.com\r\n\r\nnews\r\n",
                campaign_id=campaign_id,
                subscriber_id=subscriber_id,
            ),
        ],
    )
    async with sessionmaker() as session:
        await session.execute(
            sa.update(ArchivedMessage)
            .where(ArchivedMessage.message_id.is_distinct_from(recent_id))
            .values(created_at=old)
        )
        await session.commit()
    await retention.enforce(sessionmaker, settings, now)

    gone = await client.get(f"/api/v1/messages/{expired_id}/raw")
    assert gone.status_code == 410
    assert gone.headers["content-type"] == "application/problem+json"
    assert "WARTA_RETENTION_MESSAGES = 30 days" in gone.json()["detail"]
    gone = await client.get(f"/api/v1/campaigns/{campaign_id}/sends/{subscriber_id}/raw")
    assert gone.status_code == 410
    assert "its bytes were deleted" in gone.json()["detail"]
    kept = await client.get(f"/api/v1/messages/{recent_id}/raw")
    assert kept.status_code == 200 and kept.content == b"To: b@example.com\r\n\r\nnew\r\n"
    # The message itself still answers, with its status.
    shown = await client.get(f"/api/v1/messages/{expired_id}")
    assert shown.status_code == 200 and shown.json()["status"] == "delivered"
    # Never sent (or unknown): still 404, not 410.
    assert (await client.get(f"/api/v1/messages/{recent_id + 100}/raw")).status_code == 404
