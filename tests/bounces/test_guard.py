"""The campaign bounce guard end to end: a running campaign whose recipients bounce hard at
RCPT pauses itself, with the reason in its status."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.settings import Settings
from app.models import Send, SendStatus
from tests.helpers.api import create_campaign, post_json, wait_for_status
from tests.helpers.sinks import SinkHandler
from workers.mta.service import MtaService

RECIPIENTS = 60


@pytest.fixture
def mta_settings(mta_settings: Settings) -> Settings:
    # Slow enough (20 messages a second) that the guard acts while the campaign runs.
    return mta_settings.model_copy(update={"send_rate": 20, "bounce_guard_min_sends": 6})


async def test_a_campaign_pauses_itself_past_the_hard_bounce_rate(
    mta: MtaService,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    addresses = [f"r{index:02d}@example.com" for index in range(RECIPIENTS)]
    for address in addresses[::3]:
        remote[1].rcpt_replies[address] = [f"550 5.1.1 <{address}>: user unknown"]
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    for address in addresses:
        await post_json(api, "/api/v1/subscribers", {"email": address, "lists": [news]})
    campaign = await create_campaign(api, news, text="Hi")
    await post_json(api, f"/api/v1/campaigns/{campaign}/schedule", {})
    stats = await wait_for_status(api, campaign, "paused")
    assert stats["status_reason"].startswith("bounce guard: hard bounces over 5.0%")
    async with sessionmaker() as session:
        pending = await session.scalar(
            sa.select(sa.func.count()).where(
                Send.campaign_id == campaign, Send.status == SendStatus.pending
            )
        )
    assert pending, "the guard paused the campaign before it had sent everything"
