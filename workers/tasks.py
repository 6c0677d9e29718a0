"""arq tasks: thin wrappers that call one step of the engine with ids from the job."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from arq import Retry
from arq.connections import ArqRedis

from app.audience.tasks import send_confirmation
from app.core.jobs import enqueue_messages
from app.mail.context import EngineContext
from app.messages import idempotency
from app.messages import sending as messages
from app.models import Campaign, utcnow
from campaigns import content, dispatch, lifecycle
from campaigns.batch import send_batch as run_batch
from campaigns.proofs import send_test_messages
from workers.lease import LeaseLost, run_leased

logger = logging.getLogger(__name__)
Ctx = dict[str, Any]


def _engine(ctx: Ctx) -> EngineContext:
    engine: EngineContext = ctx["engine"]
    return engine


async def start_campaign(ctx: Ctx, campaign_id: int) -> bool:
    """scheduled → running, freeze the audience, fan out the batches; False if not due/taken."""
    engine = _engine(ctx)
    async with engine.sessionmaker() as session:
        campaign = await lifecycle.start(session, campaign_id)
        if campaign is not None:
            await content.store_tracked_links(session, campaign, engine.settings)
        await session.commit()
    if campaign is None:
        return False
    logger.info("campaign %s started: %s recipients", campaign_id, campaign.audience_size)
    await _fan_out(ctx["redis"], engine, campaign)
    return True


async def start_due_campaigns(ctx: Ctx) -> int:
    """The scheduler: start every scheduled campaign whose time has come."""
    engine = _engine(ctx)
    async with engine.sessionmaker() as session:
        due = await lifecycle.due_campaigns(session, utcnow())
    started = 0
    for campaign_id in due:
        started += await start_campaign(ctx, campaign_id)
    return started


async def reconcile(ctx: Ctx) -> int:
    """Safety net: re-enqueue ranges of running campaigns that still hold work; finish done ones.

    Enqueueing is idempotent (deterministic job ids), so this can run on every worker.
    """
    engine = _engine(ctx)
    enqueued = 0
    async with engine.sessionmaker() as session:
        running = await lifecycle.running_campaigns(session)
    for campaign in running:
        enqueued += await _fan_out(ctx["redis"], engine, campaign)
        async with engine.sessionmaker() as session:
            await lifecycle.finish_if_done(session, campaign.id)
            await session.commit()
    return enqueued


async def send_batch(ctx: Ctx, campaign_id: int, low: int, high: int) -> dict[str, Any]:
    """Send one ledger range of a campaign, in a slice of half the job's lease.

    A range not finished within the slice is handed back to the queue under the same job
    id (arq's Retry), so any worker continues where it stopped; while the slice works, a
    heartbeat renews the job's short lease (workers.lease), so a dead worker's batch is
    free again within WARTA_BATCH_LEASE seconds.
    """
    engine = _engine(ctx)
    lease = engine.settings.batch_lease
    until = time.monotonic() + engine.settings.batch_timeout / 2
    work = run_batch(engine, campaign_id, low, high, until=until)
    try:
        report = await run_leased(ctx["redis"], ctx["job_id"], lease, work)
    except LeaseLost as exc:
        # Another worker may hold the batch now: step aside for a lease, then check again.
        logger.warning("%s; the batch steps aside for %.0f s", exc, lease)
        raise Retry(defer=lease) from exc
    if report.unfinished:
        raise Retry(defer=0)
    return asdict(report)


async def send_test(ctx: Ctx, campaign_id: int, addresses: list[str]) -> list[str]:
    """Send a campaign to test addresses (no ledger rows; the replies are returned)."""
    return await send_test_messages(_engine(ctx), campaign_id, addresses)


async def send_optin_confirmation(ctx: Ctx, subscriber_id: int, list_ids: list[int]) -> str:
    """Mail a double opt-in confirmation link (priority queue)."""
    return await send_confirmation(_engine(ctx), subscriber_id, list_ids)


async def _fan_out(pool: ArqRedis, engine: EngineContext, campaign: Campaign) -> int:
    async with engine.sessionmaker() as session:
        return await dispatch.enqueue_pending(pool, session, campaign)


async def send_messages(ctx: Ctx, message_ids: list[int]) -> dict[str, Any]:
    """Send transactional messages (the priority queue)."""
    report = await messages.send_messages(_engine(ctx), message_ids)
    return asdict(report)


async def resume_messages(ctx: Ctx) -> int:
    """Safety net and retry clock: enqueue deferred messages that are due and stragglers."""
    due = await messages.due_messages(_engine(ctx))
    if due:
        await enqueue_messages(ctx["redis"], due)
    return len(due)


async def purge_idempotency_keys(ctx: Ctx) -> int:
    """Forget Idempotency-Keys older than WARTA_IDEMPOTENCY_TTL."""
    engine = _engine(ctx)
    async with engine.sessionmaker() as session:
        purged = await idempotency.purge(session, engine.settings.idempotency_ttl)
        await session.commit()
    return purged
