"""Message-IDs shared between MTA instances through Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.helpers.api import eventually
from workers.mta.dedupe import SharedMessageIds


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _connections(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_connections_received"])


async def test_concurrent_acceptances_are_shared_in_batches(redis: Redis) -> None:
    shared = SharedMessageIds(redis, 60, "mta-1")
    await shared.remember("<warm@warta.test>", "q0")  # the pool's first connection
    before = await _connections(redis)

    await asyncio.gather(*(shared.remember(f"<m{n}@warta.test>", f"q{n}") for n in range(300)))

    # One SET a message borrowed a connection each from the pool: hundreds of them.
    assert await _connections(redis) - before <= 2
    sibling = SharedMessageIds(redis, 60, "mta-2")
    seen = await asyncio.gather(*(sibling.seen(f"m{n}@warta.test") for n in range(300)))
    assert seen == [f"mta-1/q{n}" for n in range(300)]


async def test_an_acceptance_is_shared_even_if_its_session_is_cancelled(redis: Redis) -> None:
    shared = SharedMessageIds(redis, 60, "mta-1")
    waiting = asyncio.create_task(shared.remember("<gone@warta.test>", "q1"))
    await asyncio.sleep(0)  # queued in the batch
    waiting.cancel()

    async def recorded() -> bool:
        return await shared.seen("gone@warta.test") == "mta-1/q1"

    await eventually(recorded, within=5, what="the cancelled session's Message-ID shared")


async def test_unreachable_redis_answers_without_sharing() -> None:
    shared = SharedMessageIds(Redis(host="127.0.0.1", port=1), 60, "mta-1")
    try:
        await asyncio.wait_for(shared.remember("<m@warta.test>", "q1"), 5)
        assert await shared.seen("m@warta.test") is None
    finally:
        await shared.redis.aclose()
