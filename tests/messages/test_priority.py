"""A transactional message overtakes a running 20,000-recipient campaign."""

from __future__ import annotations

import time

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.helpers.api import eventually, post_json
from tests.helpers.seeding import seed_campaign
from tests.helpers.sinks import SinkHandler

RECIPIENTS = 20_000
BOUND = (
    5.0  # seconds from 202 to the sink (measured: well under 0.1 s); the benchmark gives p50/p99
)


async def test_a_receipt_reaches_the_sink_while_a_big_campaign_sends(
    api: httpx.AsyncClient,
    worker: None,
    sink: tuple[str, SinkHandler],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    campaign_id, _ = await seed_campaign(sessionmaker, RECIPIENTS)
    await post_json(api, f"/api/v1/campaigns/{campaign_id}/schedule", {})

    async def campaign_sending() -> bool:
        return len(sink[1].snapshot()) >= 500

    await eventually(campaign_sending, 60, "the campaign under way")
    response = await api.post(
        "/api/v1/messages",
        json={
            "from": "auth@example.com",
            "to": "reset@example.org",
            "subject": "Your code",
            "text": "123456",
        },
    )
    accepted_at = time.monotonic()
    assert response.status_code == 202

    def arrival() -> float | None:
        for item in sink[1].snapshot():
            if item.rcpt_tos == ("reset@example.org",):
                return item.received_at
        return None

    async def arrived() -> bool:
        return arrival() is not None

    await eventually(arrived, BOUND, "the transactional message at the sink")
    latency = (arrival() or 0.0) - accepted_at
    sent_by_then = len(sink[1].snapshot())
    stats = (await api.get(f"/api/v1/campaigns/{campaign_id}/stats")).json()
    assert stats["status"] == "running", (
        "the campaign must still be sending for this to prove anything"
    )
    assert sent_by_then < RECIPIENTS
    assert latency < BOUND
    await api.post(f"/api/v1/campaigns/{campaign_id}/cancel")
