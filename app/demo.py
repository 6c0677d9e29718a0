"""`warta demo`: seed a list, send a campaign into the capture Maildir, show progress."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from arq.connections import create_pool

from app.audience import subscribers
from app.core.database import create_engine, create_sessionmaker
from app.core.jobs import enqueue_start
from app.core.redis import arq_redis_settings
from app.core.settings import Settings
from app.models import (
    OPEN_STATUSES,
    Campaign,
    CampaignList,
    CampaignStatus,
    MailingList,
    SendStatus,
)
from campaigns import lifecycle

DEMO_HTML = """<h1>Hello {{ subscriber.name }}!</h1>
<p>This is the Warta demo campaign, rendered for you ({{ subscriber.email }}) from
{{ subscriber.attributes.city | default('somewhere') }}.</p>
<p><a href="{{ view_in_browser_url }}">View in browser</a> ·
<a href="{{ unsubscribe_url }}">Unsubscribe</a></p>"""
CITIES = ("Oslo", "Lisbon", "Kraków", "Nairobi", "Osaka")

POLL_INTERVAL = 0.2
REPORT_WAIT = 30.0
"""Seconds without news after which the demo stops waiting for delivery reports."""

Progress = Callable[[int, int, dict[str, int]], None]


def port_open(address: str) -> bool:
    """Whether something already listens on host:port."""
    host, _, port = address.rpartition(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
        return True
    return False


async def seed(settings: Settings, recipients: int) -> int:
    """A list of generated subscribers and a draft campaign to it; returns the campaign id."""
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    stamp = int(time.time())
    try:
        async with sessionmaker() as session:
            mailing_list = MailingList(name=f"Demo {stamp}", description="warta demo")
            session.add(mailing_list)
            await session.flush()
            await subscribers.add_confirmed(
                session,
                mailing_list.id,
                (
                    (
                        f"demo{stamp}.{index}@example.com",
                        f"Reader {index}",
                        {"city": CITIES[index % len(CITIES)]},
                    )
                    for index in range(recipients)
                ),
            )
            campaign = Campaign(
                name=f"Demo {stamp}",
                subject="Hello {{ subscriber.name }}, this is Warta",
                from_email="Warta Demo <demo@example.com>",
                html=DEMO_HTML,
            )
            session.add(campaign)
            await session.flush()
            session.add(CampaignList(campaign_id=campaign.id, list_id=mailing_list.id))
            await session.flush()
            await lifecycle.transition(session, campaign.id, "schedule")
            await session.commit()
            return campaign.id
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class DemoResult:
    """Where every recipient of the demo campaign ended up, as the campaign stats say."""

    campaign_id: int
    recipients: int
    counts: dict[str, int]
    status: CampaignStatus
    status_reason: str

    @property
    def delivered(self) -> int:
        """Recipients whose message the MTA delivered (into the capture Maildir)."""
        return self.counts.get(SendStatus.delivered, 0)

    @property
    def accepted(self) -> int:
        """Recipients whose message the MTA accepted: delivered, or sent and not yet reported."""
        return self.delivered + self.counts.get(SendStatus.sent, 0)

    def failure(self) -> str | None:
        """Why not every recipient's message was accepted, in one line; None if all were."""
        if self.recipients and self.accepted == self.recipients:
            return None
        others = ", ".join(
            f"{status} {count}"
            for status, count in sorted(self.counts.items())
            if status not in (SendStatus.sent, SendStatus.delivered) and count
        )
        why = f" ({others})" if others else ""
        reason = f": {self.status_reason}" if self.status_reason else ""
        return (
            f"{self.accepted} of {self.recipients} messages accepted{why}; "
            f"campaign {self.campaign_id} is {self.status}{reason}"
        )


async def run_demo(settings: Settings, recipients: int, progress: Progress) -> DemoResult:
    """Seed, start a worker (and an MTA unless one runs), send, report progress until settled.

    Done when the campaign has left `running` and the MTA has reported on every message it
    accepted (delivered within milliseconds into the capture Maildir), or after
    `REPORT_WAIT` seconds without news.
    """
    from workers.mta_process import start_mta
    from workers.worker import run_worker

    campaign_id = await seed(settings, recipients)
    mta = None if port_open(settings.mta_submission.split(",")[0]) else await start_mta(settings)
    pool = await create_pool(arq_redis_settings(settings.redis_url))
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, settings.redis_url, stop))
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    try:
        await enqueue_start(pool, campaign_id)
        settled_at: float | None = None
        last: dict[str, int] = {}
        while True:
            async with sessionmaker() as session:
                stats = await lifecycle.stats(session, campaign_id)
            total = max(stats.recipients, recipients)
            settled = sum(v for k, v in stats.counts.items() if k not in OPEN_STATUSES)
            progress(settled, total, stats.counts)
            if stats.campaign.status not in (CampaignStatus.scheduled, CampaignStatus.running):
                unreported = stats.counts.get(SendStatus.sent, 0)
                if settled_at is None or stats.counts != last:
                    settled_at, last = time.monotonic(), dict(stats.counts)
                if not unreported or time.monotonic() - settled_at > REPORT_WAIT:
                    return DemoResult(
                        campaign_id,
                        total,
                        stats.counts,
                        stats.campaign.status,
                        stats.campaign.status_reason,
                    )
            if worker.done():
                worker.result()
                raise RuntimeError("the demo's worker stopped")
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        stop.set()
        await worker
        await pool.aclose()
        await engine.dispose()
        if mta is not None:
            await mta.stop()
