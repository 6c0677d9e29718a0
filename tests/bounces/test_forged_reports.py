"""Reports anyone could write, delivered over SMTP to the MTA's inbound listener: without a
signed VERP address or signed Message-ID they are kept for an operator and change nothing —
no suppression, no status change, no unsubscribe, no campaign paused by the guard."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.events import counts_by_kind
from app.core.settings import Settings
from app.models import (
    Campaign,
    CampaignStatus,
    Send,
    SendStatus,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
)
from tests.helpers.api import create_campaign, eventually, post_json, wait_for_status
from tests.helpers.reports import arf, deliver_report, dsn, inbound_processed
from tests.helpers.sinks import SinkHandler
from workers.mta.service import MtaService
from workers.worker import run_worker

Sessions = async_sessionmaker[AsyncSession]
StopWorker = Callable[[], Awaitable[None]]
BOUNCES = "bounces.warta.example"


@pytest.fixture
def mta_settings(mta_settings: Settings) -> Settings:
    """One complaint among a handful of sends is enough for the guard to pause a campaign."""
    return mta_settings.model_copy(update={"bounce_guard_min_sends": 1})


@pytest.fixture
async def worker(engine_settings: Settings) -> AsyncIterator[StopWorker]:
    """A real worker the test can stop: its reconcile cron (every 5 s) would otherwise finish
    the campaign `_running_campaign` sets back to running, in the middle of a test."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(engine_settings, engine_settings.redis_url, stop))

    async def stop_worker() -> None:
        stop.set()
        await asyncio.wait_for(task, 30)

    yield stop_worker
    await stop_worker()


async def _running_campaign(
    api: httpx.AsyncClient, sessionmaker: Sessions, worker: StopWorker, addresses: list[str]
) -> tuple[int, dict[str, Send]]:
    """A campaign delivered to `addresses`, then set back to running as if still sending (the
    guard only pauses a running campaign); its delivered ledger rows by address. The worker is
    stopped first, so nothing finishes the campaign again while the test runs."""
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    for address in addresses:
        await post_json(api, "/api/v1/subscribers", {"email": address, "lists": [news]})
    campaign = await create_campaign(api, news, text="Hello")
    await post_json(api, f"/api/v1/campaigns/{campaign}/schedule", {})
    await wait_for_status(api, campaign, "finished")

    async def rows() -> dict[str, Send]:
        async with sessionmaker() as session:
            found = await session.scalars(sa.select(Send).where(Send.campaign_id == campaign))
            return {row.email: row for row in found}

    async def delivered() -> bool:
        found = await rows()
        return len(found) == len(addresses) and all(
            row.status is SendStatus.delivered for row in found.values()
        )

    await eventually(delivered, what="the campaign delivered")
    await worker()
    async with sessionmaker() as session:
        await session.execute(
            sa.update(Campaign).where(Campaign.id == campaign).values(status="running")
        )
        await session.commit()
    return campaign, await rows()


async def _state(sessionmaker: Sessions, campaign: int) -> dict[str, object]:
    """Everything a report could change."""
    async with sessionmaker() as session:
        status = await session.scalar(sa.select(Campaign.status).where(Campaign.id == campaign))
        return {
            "campaign": status,
            "sends": dict((await session.execute(sa.select(Send.email, Send.status))).all()),
            "subscribers": dict(
                (await session.execute(sa.select(Subscriber.email, Subscriber.status))).all()
            ),
            "memberships": sorted(
                (await session.scalars(sa.select(Subscription.status))).all(), key=str
            ),
            "suppressions": (await session.scalars(sa.select(Suppression.address))).all(),
            "events": {
                kind: count
                for kind, count in (await counts_by_kind(session, campaign)).items()
                if kind in ("bounced", "complained", "unsubscribed")
            },
        }


def _forged_arf(victim: str, campaign: int) -> bytes:
    """A complaint quoting only what anyone can write: To and Warta's Feedback-ID."""
    original = f"To: {victim}\r\nFeedback-ID: {campaign}:campaign:warta\r\nSubject: x\r\n\r\n"
    return arf(victim, original.encode())


async def test_reports_without_a_signed_clue_change_nothing_and_are_kept_unattributed(
    mta: MtaService,
    mta_settings: Settings,
    api: httpx.AsyncClient,
    worker: StopWorker,
    remote: tuple[str, SinkHandler],
    sessionmaker: Sessions,
) -> None:
    victim = "victim@example.com"
    campaign, rows = await _running_campaign(
        api, sessionmaker, worker, [victim, "other@example.com"]
    )
    row = rows[victim]
    before = await _state(sessionmaker, campaign)
    assert before["campaign"] is CampaignStatus.running
    quoted = f"<c{row.id}.aaaaaaaaaa@warta.test.example>"  # Message-ID-shaped, not signed
    forged = [
        # No VERP token at all: the plain bounce address, the victim's address as recipient.
        (f"bounces@{BOUNCES}", dsn(f"bounces@{BOUNCES}", victim, "550 5.1.1 unknown", quoted)),
        # A VERP token for the victim's real row with a made-up signature.
        (f"bounces+c{row.id}-aaaaaaaaaa@{BOUNCES}", None),
        # Any local part at the bounce domain: the listener accepts it.
        (f"postmaster@{BOUNCES}", dsn(f"postmaster@{BOUNCES}", victim, "550 5.1.1 x", "<a@b>")),
        # A complaint carrying only Warta's Feedback-ID (it once tripped the guard).
        (f"complaints@{BOUNCES}", _forged_arf(victim, campaign)),
    ]
    for recipient, report in forged:
        data = report or dsn(recipient, victim, "550 5.1.1 user unknown", quoted)
        code, reply = await deliver_report(mta_settings, recipient, data)
        assert code == 250, reply
    await inbound_processed(mta_settings)
    assert await _state(sessionmaker, campaign) == before

    listed = (await api.get("/api/v1/bounces")).json()["items"]
    assert [item["action"] for item in listed] == [
        "unattributed: no signed token",
        "unattributed: forged token",
        "unattributed: no signed token",
        "unattributed: no signed token",
    ]
    assert {item["email"] for item in listed} == {victim}
    assert {(item["campaign_id"], item["subscriber_id"], item["send_id"]) for item in listed} == {
        (None, None, None)
    }
    assert [item["kind"] for item in listed].count("complaint") == 1
    detail = (await api.get(f"/api/v1/bounces/{listed[-1]['id']}")).json()
    assert "Feedback-Type: abuse" in detail["raw"]
    stats = (await api.get(f"/api/v1/campaigns/{campaign}/stats")).json()
    assert (stats["bounced"], stats["complained"], stats["status"]) == (0, 0, "running")

    # The genuine complaint (the signed Message-ID of the original) still acts, and the
    # guard pauses the campaign; so would the forged one have, were it trusted.
    original = next(item for item in remote[1].snapshot() if item.rcpt_tos == (victim,))
    code, _ = await deliver_report(
        mta_settings, f"complaints@{BOUNCES}", arf(victim, original.data)
    )
    assert code == 250
    await inbound_processed(mta_settings)
    after = await _state(sessionmaker, campaign)
    assert after["campaign"] is CampaignStatus.paused
    assert after["suppressions"] == [victim]
    assert after["events"] == {"complained": 1}
    assert after["memberships"] == [SubscriptionStatus.confirmed, SubscriptionStatus.unsubscribed]


async def test_a_genuine_dsn_to_the_verp_address_still_bounces(
    mta: MtaService,
    mta_settings: Settings,
    api: httpx.AsyncClient,
    worker: StopWorker,
    remote: tuple[str, SinkHandler],
    sessionmaker: Sessions,
) -> None:
    address = "gone@example.com"
    campaign, rows = await _running_campaign(api, sessionmaker, worker, [address])
    original = remote[1].snapshot()[0]
    report = dsn(original.mail_from, address, "550 5.1.1 user unknown", original.message_id)
    assert (await deliver_report(mta_settings, original.mail_from, report))[0] == 250
    await inbound_processed(mta_settings)
    state = await _state(sessionmaker, campaign)
    assert state["sends"] == {address: SendStatus.bounced}
    assert state["subscribers"] == {address: SubscriberStatus.blocklisted}
    assert state["suppressions"] == [address]
    [item] = (await api.get("/api/v1/bounces")).json()["items"]
    assert (item["action"], item["send_id"]) == ("suppressed", rows[address].id)


async def test_a_non_ascii_verp_token_is_kept_unattributed_not_retried(
    mta: MtaService,
    mta_settings: Settings,
    api: httpx.AsyncClient,
    worker: StopWorker,
    remote: tuple[str, SinkHandler],
    sessionmaker: Sessions,
) -> None:
    victim = "victim@example.com"
    campaign, rows = await _running_campaign(api, sessionmaker, worker, [victim])
    before = await _state(sessionmaker, campaign)
    for mac in ("éé", "²²²²²²²²²²"):
        for recipient in (
            f"bounces+c{rows[victim].id}-{mac}@{BOUNCES}",
            f"bounces+c{mac}@{BOUNCES}",
        ):
            report = dsn(recipient, victim, "550 5.1.1 user unknown", "<a@b>")
            code, reply = await deliver_report(mta_settings, recipient, report, utf8=True)
            assert code == 250, reply
    # Once a TypeError in the processor: the file stayed in the Maildir, retried for ever.
    await inbound_processed(mta_settings)
    assert await _state(sessionmaker, campaign) == before
    listed = (await api.get("/api/v1/bounces")).json()["items"]
    assert [item["action"] for item in listed] == ["unattributed: forged token"] * 4
