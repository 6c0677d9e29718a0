"""What the engine does with each kind of reply, late suppressions, segments and races."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.database import create_engine, create_sessionmaker
from app.core.settings import Settings
from app.models import Campaign, CampaignStatus, Event, Send, SendStatus
from campaigns import lifecycle
from tests.helpers.api import create_campaign, post_json, wait_for_status
from tests.helpers.seeding import seed_campaign
from tests.helpers.sinks import SinkHandler


@pytest.fixture
def engine_settings(settings: Settings, sink: tuple[str, SinkHandler]) -> Settings:
    # Deferred recipients come back after 0.2 s (doubling) instead of a minute.
    return settings.model_copy(
        update={"mta_submission": sink[0], "sender_connections": 4, "retry_base": 0.2}
    )


async def test_4xx_defers_and_retries_5xx_fails_with_the_reply(
    api: httpx.AsyncClient, worker: None, sink: tuple[str, SinkHandler], session: AsyncSession
) -> None:
    handler = sink[1]
    handler.rcpt_replies["later@example.com"] = ["451 4.7.1 Try again later", "421 4.7.0 busy"]
    handler.rcpt_replies["nobody@example.com"] = ["550 5.1.1 No such user here"]
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    for address in ("ok@example.com", "later@example.com", "nobody@example.com"):
        await post_json(api, "/api/v1/subscribers", {"email": address, "lists": [news]})
    campaign_id = await create_campaign(api, news)
    await post_json(api, f"/api/v1/campaigns/{campaign_id}/schedule", {})
    stats = await wait_for_status(api, campaign_id, "finished", within=60)
    assert (stats["sent"], stats["failed"], stats["deferred"]) == (2, 1, 0)
    rows = {
        row.email: row
        for row in (await session.scalars(sa.select(Send).where(Send.campaign_id == campaign_id)))
    }
    assert rows["later@example.com"].status == SendStatus.sent
    assert rows["later@example.com"].attempts == 3
    assert rows["nobody@example.com"].status == SendStatus.failed
    assert rows["nobody@example.com"].last_reply == "550 5.1.1 No such user here"
    received = sorted(rcpt for item in handler.snapshot() for rcpt in item.rcpt_tos)
    assert received == ["later@example.com", "ok@example.com"]
    # Every attempt is an event, for webhooks and timelines.
    events = (
        await session.execute(
            sa.select(Event.email, Event.kind)
            .where(Event.campaign_id == campaign_id)
            .order_by(Event.id)
        )
    ).all()
    assert sorted(events) == [
        ("later@example.com", "deferred"),
        ("later@example.com", "deferred"),
        ("later@example.com", "sent"),
        ("nobody@example.com", "failed"),
        ("ok@example.com", "sent"),
    ]


async def test_segment_narrows_the_audience(
    api: httpx.AsyncClient, worker: None, sink: tuple[str, SinkHandler]
) -> None:
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    for age, address in ((20, "young@example.com"), (70, "old@example.com")):
        await post_json(
            api,
            "/api/v1/subscribers",
            {"email": address, "lists": [news], "attributes": {"age": age}},
        )
    segment = {"attribute": "age", "op": "gte", "value": 30}
    campaign_id = await create_campaign(api, news, segment=segment)
    await post_json(api, f"/api/v1/campaigns/{campaign_id}/schedule", {})
    await wait_for_status(api, campaign_id, "finished")
    assert [item.rcpt_tos for item in sink[1].snapshot()] == [("old@example.com",)]


async def test_an_address_suppressed_while_running_is_skipped(
    api: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    engine_settings: Settings,
    sink: tuple[str, SinkHandler],
) -> None:
    from workers.worker import run_worker

    campaign_id, emails = await seed_campaign(sessionmaker, 50)
    async with sessionmaker() as session:
        await lifecycle.transition(session, campaign_id, "schedule")
        await session.commit()
        started = await lifecycle.start(session, campaign_id)
        await session.commit()
    assert started is not None and started.audience_size == 50
    # After the freeze, before any worker runs: one unsubscribes everywhere, one is suppressed.
    await post_json(api, "/api/v1/suppressions", {"address": emails[10]})
    subscriber = (await api.get("/api/v1/subscribers", params={"email": emails[20]})).json()
    await api.patch(f"/api/v1/subscribers/{subscriber['items'][0]['id']}", json={"lists": []})
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(engine_settings, engine_settings.redis_url, stop))
    try:
        stats = await wait_for_status(api, campaign_id, "finished")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    received = {rcpt for item in sink[1].snapshot() for rcpt in item.rcpt_tos}
    assert received == set(emails) - {emails[10], emails[20]}
    assert stats["skipped"] == 2


@pytest.fixture
async def second_sessionmaker(
    settings: Settings,
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def test_two_starters_race_and_exactly_one_freezes_the_audience(
    sessionmaker: async_sessionmaker[AsyncSession],
    second_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    campaign_id, emails = await seed_campaign(sessionmaker, 200)
    async with sessionmaker() as session:
        await lifecycle.transition(session, campaign_id, "schedule")
        await session.commit()

    async def start(maker: async_sessionmaker[AsyncSession]) -> bool:
        async with maker() as session:
            try:
                started = await lifecycle.start(session, campaign_id)
                await session.commit()
            except sa.exc.OperationalError:  # SQLite: the loser may find the database locked
                await session.rollback()
                return False
            return started is not None

    outcomes = await asyncio.gather(start(sessionmaker), start(second_sessionmaker))
    assert sorted(outcomes) == [False, True]
    async with sessionmaker() as session:
        count = await session.scalar(
            sa.select(sa.func.count()).select_from(Send).where(Send.campaign_id == campaign_id)
        )
        campaign = await session.get(Campaign, campaign_id)
    assert count == len(emails)
    assert campaign is not None and campaign.status == CampaignStatus.running
