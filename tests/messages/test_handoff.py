"""The enqueue of stored messages: requests that wait together share one enqueue."""

from __future__ import annotations

import asyncio
import socket

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.exceptions import ConnectionError as RedisConnectionError

from app.core.jobs import PRIORITY_QUEUE
from app.messages.handoff import GroupEnqueuer


async def test_requests_waiting_together_share_one_job(redis_url: str) -> None:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        enqueuer = GroupEnqueuer(pool)
        # Ten requests finish at once: the first starts the enqueue, the others join it.
        await asyncio.gather(*(enqueuer.enqueue([100 + i]) for i in range(10)))
        await enqueuer.enqueue([])  # nothing to hand over: no job
        jobs = await pool.queued_jobs(queue_name=PRIORITY_QUEUE)
        assert [job.args for job in jobs] == [([100 + i for i in range(10)],)]
        # Later requests get jobs of their own (each returned once its ids were queued).
        await enqueuer.enqueue([200, 201])
        jobs = await pool.queued_jobs(queue_name=PRIORITY_QUEUE)
        assert sorted(job.args[0][0] for job in jobs) == [100, 200]
    finally:
        await pool.aclose()


async def test_drain_waits_for_the_enqueue_of_a_request_that_went_away(redis_url: str) -> None:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        enqueuer = GroupEnqueuer(pool)
        request = asyncio.create_task(enqueuer.enqueue([300]))
        await asyncio.sleep(0)  # let the request start its enqueue, then its client goes away
        request.cancel()
        await enqueuer.drain()  # what the app's shutdown does before closing the pool
        jobs = await pool.queued_jobs(queue_name=PRIORITY_QUEUE)
        assert [job.args for job in jobs] == [([300],)]
        assert request.cancelled()
    finally:
        await pool.aclose()


async def test_an_enqueue_error_reaches_every_waiting_request() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = ArqRedis(host="127.0.0.1", port=port)
    try:
        results = await asyncio.gather(
            *(GroupEnqueuer(pool).enqueue([i]) for i in range(1)),
            *(shared.enqueue([i]) for shared in [GroupEnqueuer(pool)] for i in range(3)),
            return_exceptions=True,
        )
    finally:
        await pool.aclose()
    assert len(results) == 4
    assert all(isinstance(result, RedisConnectionError) for result in results), results
