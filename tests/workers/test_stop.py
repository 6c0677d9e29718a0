"""Stopping `warta worker`: arq's poll loops end between rounds, not inside a Redis round trip."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.connections import create_pool

from app.core.redis import arq_redis_settings
from app.core.settings import Settings
from tests.helpers.api import eventually
from workers.worker import _stop_polling, build_workers, engine_context


async def test_the_poll_loops_return_on_their_own_at_stop(settings: Settings) -> None:
    """A cancelled loop may be inside a cron's WATCH pipeline and leak its connection."""
    pool = await create_pool(arq_redis_settings(settings.redis_url))
    try:
        async with engine_context(settings, pool) as engine:
            ctx: dict[str, Any] = {"engine": engine}
            workers = build_workers(settings, pool, ctx)
            runs = [asyncio.create_task(worker.async_run()) for worker in workers]

            async def crons_ran() -> bool:  # the loops are past start-up and polling
                return all(worker.jobs_complete + len(worker.tasks) for worker in workers[1:])

            await eventually(crons_ran, 10, "the priority worker's start-up crons")
            for worker in workers:
                worker.allow_pick_jobs = False
            await asyncio.gather(*(task for w in workers for task in w.tasks.values()))
            await _stop_polling(workers, runs, 5.0)
            assert [run.cancelled() for run in runs] == [False, False]
            assert [run.exception() for run in runs] == [None, None]
    finally:
        await pool.aclose()
