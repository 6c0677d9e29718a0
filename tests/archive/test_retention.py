"""Retention deletes exactly what is older than each limit, in batches, while rows keep
arriving; what is newer, and pending webhook deliveries, stay."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive import retention
from app.core import api_keys
from app.core.settings import Settings
from app.models import (
    ArchivedMessage,
    Bounce,
    DeliveryStatus,
    Event,
    IdempotencyKey,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)

LIMITS = {"messages": 3, "events": 10, "reports": 5, "idempotency_keys": 2, "webhooks": 4}
PER_SIDE = 23  # rows just older and just newer than each limit; several batches of 7


def ages(days: int) -> list[timedelta]:
    """Ages on both sides of the limit, the nearest a minute away from it."""
    limit = timedelta(days=days)
    older = [limit + timedelta(minutes=1 + n * 7) for n in range(PER_SIDE)]
    newer = [limit - timedelta(minutes=1 + n * 7) for n in range(PER_SIDE)]
    return older + newer


async def seed(session: AsyncSession, now: datetime) -> None:
    key, _ = await api_keys.create_key(session, "k", ["messages:write"])
    endpoint = WebhookEndpoint(url="http://127.0.0.1:9/", secret="s" * 32)
    session.add(endpoint)
    await session.flush()
    for n, age in enumerate(ages(LIMITS["messages"])):
        session.add(
            ArchivedMessage(
                message_id=n + 1,
                path="2000-01-01.zst",
                frame_offset=0,
                frame_length=1,
                start=0,
                sha256="0" * 64,
                size=1,
                created_at=now - age,
            )
        )
    for age in ages(LIMITS["events"]):
        session.add(Event(kind="sent", email="a@example.com", created_at=now - age))
    for age in ages(LIMITS["reports"]):
        session.add(
            Bounce(
                email="a@example.com",
                kind="bounce",
                source="dsn",
                raw="report",
                created_at=now - age,
            )
        )
    for n, age in enumerate(ages(LIMITS["idempotency_keys"])):
        session.add(
            IdempotencyKey(api_key_id=key.id, key=f"k{n}", request_hash="h", created_at=now - age)
        )
    for n, age in enumerate(ages(LIMITS["webhooks"])):
        session.add(
            WebhookDelivery(
                endpoint_id=endpoint.id,
                event_id=n + 1,
                status=DeliveryStatus.delivered,
                created_at=now - age,
            )
        )
    # Owed to its endpoint: kept however old.
    session.add(
        WebhookDelivery(
            endpoint_id=endpoint.id,
            event_id=10_000,
            status=DeliveryStatus.pending,
            created_at=now - timedelta(days=400),
        )
    )
    await session.commit()


async def test_retention_deletes_exactly_what_is_older_than_each_limit_under_load(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    now = utcnow()
    async with sessionmaker() as session:
        await seed(session, now)
    config = settings.model_copy(
        update={
            "retention_messages": LIMITS["messages"],
            "retention_events": LIMITS["events"],
            "retention_reports": LIMITS["reports"],
            "retention_idempotency_keys": LIMITS["idempotency_keys"],
            "retention_webhook_deliveries": LIMITS["webhooks"],
            "retention_batch": 7,
        }
    )
    stop = asyncio.Event()
    inserted = 0

    async def traffic() -> None:
        # Sending goes on: new events are written in their own short transactions.
        nonlocal inserted
        while not stop.is_set():
            async with sessionmaker() as session:
                session.add(Event(kind="sent", email="new@example.com"))
                await session.commit()
            inserted += 1
            await asyncio.sleep(0)

    load = asyncio.create_task(traffic())
    try:
        report = await retention.enforce(sessionmaker, config, now)
    finally:
        stop.set()
        await load
    assert inserted > 0
    assert report.removed["messages"] == PER_SIDE
    assert report.removed["events"] == PER_SIDE
    assert report.removed["reports"] == PER_SIDE
    assert report.removed["idempotency_keys"] == PER_SIDE
    assert report.removed["webhook_deliveries"] == PER_SIDE

    async with sessionmaker() as session:

        async def oldest(column: sa.ColumnElement[datetime], *where: object) -> datetime:
            value = await session.scalar(sa.select(sa.func.min(column)).where(*where))
            assert isinstance(value, datetime)
            return value

        async def count(model: type, *where: object) -> int:
            statement = sa.select(sa.func.count()).select_from(model).where(*where)
            return int(await session.scalar(statement) or 0)

        def cutoff(days: int) -> datetime:
            return now - timedelta(days=days)

        assert await count(ArchivedMessage) == PER_SIDE
        assert await oldest(ArchivedMessage.created_at) > cutoff(LIMITS["messages"])
        assert await count(Event, Event.email == "a@example.com") == PER_SIDE
        assert await count(Event, Event.email == "new@example.com") == inserted
        assert await oldest(Event.created_at) > cutoff(LIMITS["events"])
        assert await count(Bounce) == 2 * PER_SIDE  # the rows stay; old ones lose the text
        assert await count(Bounce, Bounce.raw == "report") == PER_SIDE
        assert await oldest(Bounce.created_at, Bounce.raw != "") > cutoff(LIMITS["reports"])
        assert await count(IdempotencyKey) == PER_SIDE
        assert await oldest(IdempotencyKey.created_at) > cutoff(LIMITS["idempotency_keys"])
        done = WebhookDelivery.status != DeliveryStatus.pending
        assert await count(WebhookDelivery, done) == PER_SIDE
        assert await oldest(WebhookDelivery.created_at, done) > cutoff(LIMITS["webhooks"])
        assert await count(WebhookDelivery, ~done) == 1

    again = await retention.enforce(sessionmaker, config, now)
    assert again.total == 0


async def test_zero_keeps_forever(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    now = utcnow()
    async with sessionmaker() as session:
        await seed(session, now)
    forever = settings.model_copy(
        update={
            "retention_messages": 0,
            "retention_events": 0,
            "retention_reports": 0,
            "retention_idempotency_keys": 0,
            "retention_webhook_deliveries": 0,
        }
    )
    report = await retention.enforce(sessionmaker, forever, now)
    assert report.total == 0


def test_days_read_as_contract_writes_them() -> None:
    assert Settings(retention_events="400d", _env_file=None).retention_events == 400  # type: ignore[call-arg]
