"""`warta worker`: two arq workers in one process, bulk (campaign batches) and priority."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from arq import cron
from arq.connections import ArqRedis, create_pool
from arq.typing import WorkerCoroutine
from arq.worker import Function, Worker, func
from redis.asyncio import Redis

from app.archive.retention import retention_job
from app.core.database import create_engine, create_sessionmaker
from app.core.jobs import BULK_QUEUE, PRIORITY_QUEUE
from app.core.ratelimit import RateLimiter
from app.core.redis import arq_redis_settings
from app.core.settings import Settings
from app.inbound.retention import quarantine_retention_job
from app.mail.context import EngineContext
from app.mail.injection import submission_sender
from app.webhooks.dispatcher import WebhookDispatcher
from workers import tasks

logger = logging.getLogger(__name__)
BATCH_MAX_TRIES = 1_000_000  # slices and retries of one batch; a slice is a try
SHUTDOWN_GRACE = 10.0  # seconds running jobs get to finish before they are cancelled
STOP_POLLING_WAIT = 5.0  # seconds arq's poll loops get to end between rounds at shutdown


@asynccontextmanager
async def engine_context(settings: Settings, redis: Redis) -> AsyncIterator[EngineContext]:
    """Open the database engine and the SMTP pool for the life of the worker."""
    engine = create_engine(settings)
    sender = submission_sender(settings, connections=settings.sender_connections)
    priority = submission_sender(settings, connections=settings.sender_priority_connections)
    try:
        async with sender, priority:
            yield EngineContext(
                settings=settings,
                sessionmaker=create_sessionmaker(engine),
                sender=sender,
                limiter=RateLimiter(redis),
                priority_sender=priority,
            )
    finally:
        await engine.dispose()


def _logs_work(
    task: Callable[[dict[str, Any]], Coroutine[Any, Any, int]], message: str
) -> WorkerCoroutine:
    """A cron that logs `message % count` at INFO when it did work and nothing when not.

    arq's own line per job run is DEBUG (app.core.logging): an idle worker prints nothing.
    """

    @functools.wraps(task)  # keeps the name, so arq's cron job ids stay the same
    async def run(ctx: dict[str, Any]) -> int:
        count = await task(ctx)
        if count:
            logger.info(message, count)
        return count

    return run


def build_workers(settings: Settings, pool: ArqRedis, ctx: dict[str, Any]) -> list[Worker]:
    """The bulk worker (batches) and the priority worker (starts, tests, scheduler crons)."""
    # Batches run in slices of half their timeout (see tasks.send_batch), each slice one
    # "try", under a short lease that a heartbeat renews while the slice works.
    batch = func(
        tasks.send_batch, timeout=settings.batch_timeout, keep_result=0, max_tries=BATCH_MAX_TRIES
    )
    common: dict[str, Any] = {
        "redis_pool": pool,
        "ctx": ctx,
        "handle_signals": False,
        "poll_delay": 0.05,
        "keep_result": 0,
    }
    priority_functions: list[Function] = [
        func(tasks.start_campaign, keep_result=0),
        func(tasks.send_test, timeout=120, keep_result=300),
        func(tasks.send_optin_confirmation, timeout=60, keep_result=0),
        func(tasks.send_messages, timeout=120, keep_result=0, max_tries=1000),
    ]
    bulk = Worker(
        functions=[batch],
        queue_name=BULK_QUEUE,
        max_jobs=settings.worker_batches,
        **common,
    )
    # A short lease instead of arq's (timeout + 10 s): each batch's heartbeat renews it
    # (workers.lease), so only a dead worker's batches see it expire.
    bulk.in_progress_timeout_s = settings.batch_lease
    return [
        bulk,
        Worker(
            functions=priority_functions,
            queue_name=PRIORITY_QUEUE,
            max_jobs=20,
            cron_jobs=[
                # start_campaign logs each campaign it starts: nothing to add here.
                cron(tasks.start_due_campaigns, second=set(range(60)), run_at_startup=True),
                cron(
                    _logs_work(tasks.reconcile, "reconcile: %d batch jobs enqueued again"),
                    second=set(range(0, 60, 5)),
                    run_at_startup=True,
                ),
                cron(
                    _logs_work(tasks.resume_messages, "%d due transactional messages enqueued"),
                    second=set(range(60)),
                    run_at_startup=True,
                ),
                cron(_logs_work(retention_job, "retention: %d rows removed"), minute={7, 37}),
                cron(
                    _logs_work(quarantine_retention_job, "%d quarantined replies expired"),
                    minute={9, 39},
                ),
                cron(
                    _logs_work(tasks.purge_idempotency_keys, "%d expired Idempotency-Keys purged"),
                    minute=set(range(0, 60, 10)),
                    second=0,
                ),
            ],
            **common,
        ),
    ]


async def run_worker(
    settings: Settings,
    redis_url: str,
    stop: asyncio.Event | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    """Run both workers until `stop` is set (by default: SIGINT or SIGTERM); `started` is
    called once they run (`warta worker` settles the cycle collector then)."""
    pool = await create_pool(arq_redis_settings(redis_url))
    try:
        async with engine_context(settings, pool) as engine:
            ctx: dict[str, Any] = {"engine": engine}
            workers = build_workers(settings, pool, ctx)
            if stop is None:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
            runs = [asyncio.create_task(worker.async_run()) for worker in workers]
            dispatcher_stop = asyncio.Event()
            dispatcher = asyncio.create_task(
                WebhookDispatcher(settings, engine.sessionmaker).run(dispatcher_stop)
            )
            logger.info("worker ready: queues %s, %s", BULK_QUEUE, PRIORITY_QUEUE)
            if started is not None:
                started()
            await stop.wait()
            await _drain(workers, SHUTDOWN_GRACE)
            dispatcher_stop.set()
            await dispatcher
            await _stop_polling(workers, runs, STOP_POLLING_WAIT)
    finally:
        await pool.aclose()


async def _stop_polling(workers: list[Worker], runs: list[asyncio.Task[None]], wait: float) -> None:
    """End arq's poll loops between two rounds rather than cancel them inside one.

    A round talks to Redis (a cron's enqueue is a WATCH pipeline): a cancel landing in the
    pipeline's own clean-up leaves it holding its connection, which then leaks. arq has no
    stop switch, but in burst mode with no jobs left to start its loop returns after the
    round it is in; only a loop that has not returned within `wait` is cancelled. (A round
    that was already reading the queue when `_drain` stopped the picking may still start a
    job: the loop then waits for it, so `wait` is that job's grace too.)
    """
    for worker in workers:
        worker.burst = True
        worker.max_burst_jobs = 0
    try:
        await asyncio.wait(runs, timeout=wait)
    finally:  # also when cancelled itself: the pool closes next, the loops must not run on
        for run in runs:
            run.cancel()  # a loop that returned is done: nothing to cancel
        await asyncio.gather(*runs, return_exceptions=True)


async def _drain(workers: list[Worker], grace: float) -> None:
    """Stop taking jobs, give running ones `grace` seconds, then cancel what is left.

    A cancelled batch loses nothing: its rows stay pending or sending in the ledger and
    its job stays queued, so another worker sends them (with the same Message-IDs).
    """
    for worker in workers:
        worker.allow_pick_jobs = False
    running = [task for worker in workers for task in worker.tasks.values() if not task.done()]
    if running:
        _, pending = await asyncio.wait(running, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
