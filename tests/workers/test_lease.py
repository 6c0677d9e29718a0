"""The batch lease: renewed while the work runs, and the work stopped when it is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from workers.lease import LeaseLost, run_leased

KEY = in_progress_key_prefix + "job-1"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_lease_outlives_its_length_while_the_work_runs(redis: Redis) -> None:
    await redis.set(KEY, b"1", px=300)  # as arq sets it when the job starts
    seen: list[int] = []

    async def work() -> str:
        for _ in range(8):  # 0.8 s: more than twice the lease
            await asyncio.sleep(0.1)
            seen.append(int(await redis.exists(KEY)))
        return "done"

    assert await run_leased(redis, "job-1", 0.3, work()) == "done"
    assert seen == [1] * 8
    await asyncio.sleep(0.4)
    assert not await redis.exists(KEY), "the lease must lapse once the heartbeat stops"


async def test_a_lease_taken_by_another_run_stops_the_work(redis: Redis) -> None:
    await redis.set(KEY, b"1", px=300)
    stopped = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    async def take_over() -> None:
        await asyncio.sleep(0.05)
        await redis.set(KEY, b"another worker", px=5000)

    taker = asyncio.create_task(take_over())
    with pytest.raises(LeaseLost):
        await run_leased(redis, "job-1", 0.3, work())
    await taker
    assert stopped.is_set()
    assert await redis.get(KEY) == b"another worker", "a stranger's lease must be left alone"


async def test_an_expired_lease_is_not_taken_back(redis: Redis) -> None:
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(LeaseLost):
        await run_leased(redis, "job-1", 0.3, work())
    assert not await redis.exists(KEY)
    assert not ran
