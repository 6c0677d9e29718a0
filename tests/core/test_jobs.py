"""Enqueueing batch jobs: idempotent per range, cheap when the jobs are already there."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, result_key_prefix

from app.core.jobs import BULK_QUEUE, batch_job_id, enqueue_batches


@pytest.fixture
async def pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    yield pool
    await pool.aclose()


async def test_only_ranges_without_a_queued_running_or_finished_job_are_enqueued(
    pool: ArqRedis,
) -> None:
    ranges = [(low, low + 499) for low in range(1, 1501, 500)]
    assert await enqueue_batches(pool, 7, ranges[:1]) == 1
    # The second range ran and left its result; the third was never seen.
    await pool.set(result_key_prefix + batch_job_id(7, ranges[1][0]), b"done")

    assert await enqueue_batches(pool, 7, ranges) == 1
    assert await enqueue_batches(pool, 7, ranges) == 0

    queued = {job.job_id for job in await pool.queued_jobs(queue_name=BULK_QUEUE)}
    assert queued == {batch_job_id(7, ranges[0][0]), batch_job_id(7, ranges[2][0])}
    job = await pool.get(job_key_prefix + batch_job_id(7, ranges[2][0]))
    assert job is not None


async def test_a_campaign_of_thousands_of_ranges_is_checked_in_a_few_round_trips(
    pool: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ranges = [(low, low + 499) for low in range(1, 2500 * 500, 500)]
    assert await enqueue_batches(pool, 9, ranges) == 2500
    asked: list[str] = []
    enqueue = ArqRedis.enqueue_job

    async def counted(self: ArqRedis, function: str, *args: object, **kwargs: object) -> object:
        asked.append(function)
        return await enqueue(self, function, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ArqRedis, "enqueue_job", counted)
    assert await enqueue_batches(pool, 9, ranges) == 0
    assert asked == []  # every job was found queued: arq's one-by-one enqueue is skipped
