"""`warta demo`: seed a list, send a campaign into the capture Maildir, show progress."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable

from arq.connections import create_pool

from app.audience import subscribers
from app.core.database import create_engine, create_sessionmaker
from app.core.jobs import enqueue_start
from app.core.redis import arq_redis_settings
from app.core.settings import Settings
from app.models import (
    Campaign,
    CampaignList,
    MailingList,
)
from campaigns import lifecycle

DEMO_HTML = """<h1>Hello {{ subscriber.name }}!</h1>
<p>This is the Warta demo campaign, rendered for you ({{ subscriber.email }}) from
{{ subscriber.attributes.city | default('somewhere') }}.</p>
<p><a href="{{ view_in_browser_url }}">View in browser</a> ·
<a href="{{ unsubscribe_url }}">Unsubscribe</a></p>"""
CITIES = ("Oslo", "Lisbon", "Kraków", "Nairobi", "Osaka")

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


async def run_demo(settings: Settings, recipients: int, progress: Progress) -> dict[str, int]:
    """Seed, start a worker (unless one runs), send, and report progress until finished."""
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
        while True:
            async with sessionmaker() as session:
                stats = await lifecycle.stats(session, campaign_id)
                status = await lifecycle.current_status(session, campaign_id)
            done = sum(
                v for k, v in stats.counts.items() if k not in ("pending", "sending", "sent")
            )
            progress(done, max(stats.recipients, recipients), stats.counts)
            finished = status is not None and status.value in ("finished", "cancelled", "paused")
            if finished and (mta is None or done >= stats.recipients):
                return stats.counts
            if worker.done():
                worker.result()
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await worker
        await pool.aclose()
        await engine.dispose()
        if mta is not None:
            await mta.stop()
