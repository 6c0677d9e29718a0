"""The GCRA rate limiter against a real redis-server, shared by separate connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from app.core.ratelimit import GLOBAL_SCOPE, RateLimiter, campaign_scope
from tests.helpers.servers import RedisServer, free_port

RATE = 200.0
MESSAGES = 400
BATCH = 5


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def clients(redis_server: RedisServer) -> AsyncIterator[tuple[Redis, Redis]]:
    first, second = Redis.from_url(redis_server.url), Redis.from_url(redis_server.url)
    await first.flushdb()
    try:
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


async def test_two_limiters_share_one_rate(clients: tuple[Redis, Redis]) -> None:
    limiters = [RateLimiter(client) for client in clients]
    sent = [0, 0]

    async def worker(index: int) -> None:
        for _ in range(MESSAGES // len(limiters) // BATCH):
            await limiters[index].wait(GLOBAL_SCOPE, RATE, BATCH)
            sent[index] += BATCH

    started = time.monotonic()
    await asyncio.gather(worker(0), worker(1))
    elapsed = time.monotonic() - started

    assert sum(sent) == MESSAGES
    achieved = MESSAGES / elapsed
    # The first batch leaves at once (burst = batch), so the ceiling is MESSAGES/(MESSAGES-BATCH)·R.
    # Two limiters never exceed the one rate together: that is the property, and it holds on a
    # loaded machine too. The floor only catches a limiter that throttles far too hard (a busy
    # machine slows the two loops down, so it cannot be tight without being a timing test).
    ceiling = MESSAGES / (MESSAGES - BATCH) * RATE
    assert achieved <= ceiling * 1.02, f"{achieved:.1f} msg/s over {elapsed:.3f} s"
    assert achieved >= 0.5 * RATE, f"{achieved:.1f} msg/s over {elapsed:.3f} s"


async def test_reservations_queue_up_at_the_rate(clients: tuple[Redis, Redis]) -> None:
    limiter = RateLimiter(clients[0])
    assert await limiter.acquire(GLOBAL_SCOPE, 10, count=5) == 0
    # The next 5 at 10/s wait for the first 5 (0.5 s); one more waits for all ten (1.0 s).
    assert await limiter.acquire(GLOBAL_SCOPE, 10, count=5) == pytest.approx(0.5, abs=0.05)
    assert await limiter.acquire(GLOBAL_SCOPE, 10) == pytest.approx(1.0, abs=0.05)


async def test_burst_lets_an_idle_scope_send_at_once(clients: tuple[Redis, Redis]) -> None:
    limiter = RateLimiter(clients[0])
    for _ in range(10):
        assert await limiter.acquire("bursty", 1, burst=10) == 0
    assert await limiter.acquire("bursty", 1, burst=10) == pytest.approx(1.0, abs=0.05)


async def test_campaign_scope_is_independent_of_global(clients: tuple[Redis, Redis]) -> None:
    limiter = RateLimiter(clients[0])
    await limiter.acquire(GLOBAL_SCOPE, 10, count=100)
    assert await limiter.acquire(GLOBAL_SCOPE, 10) > 5
    assert await limiter.acquire(campaign_scope(7), 10) == 0
    assert await limiter.acquire(campaign_scope(8), 10) == 0
    assert await limiter.acquire(campaign_scope(7), 10) == pytest.approx(0.1, abs=0.05)


async def test_scope_key_expires_when_idle(clients: tuple[Redis, Redis]) -> None:
    limiter = RateLimiter(clients[0])
    await limiter.acquire(campaign_scope(1), 100, count=10)
    ttl = await clients[0].pttl("warta:ratelimit:campaign:1")
    assert 0 < ttl <= 1100


async def test_unlimited_makes_no_redis_round_trip() -> None:
    # Nothing listens on this port: any command would fail with a connection error.
    client = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        limiter = RateLimiter(client)
        assert await limiter.acquire(GLOBAL_SCOPE, 0, count=1000) == 0
        assert await limiter.wait(campaign_scope(3), -1) == 0
    finally:
        await client.aclose()


async def test_invalid_counts_are_refused(clients: tuple[Redis, Redis]) -> None:
    limiter = RateLimiter(clients[0])
    with pytest.raises(ValueError, match="count"):
        await limiter.acquire(GLOBAL_SCOPE, 10, count=0)
    with pytest.raises(ValueError, match="burst"):
        await limiter.acquire(GLOBAL_SCOPE, 10, burst=0)


async def test_try_acquire_refuses_beyond_the_burst_without_reserving(
    clients: tuple[Redis, Redis],
) -> None:
    first, second = (RateLimiter(client) for client in clients)
    rate = 0.5  # one slot every 2 s
    assert [await first.try_acquire("form:ip", rate, burst=3) for _ in range(3)] == [True] * 3
    refusals = [await second.try_acquire("form:ip", rate, burst=3) for _ in range(50)]
    assert not any(refusals)
    # Had the 50 refusals reserved slots, the next one would be 100 s away; it is 2 s.
    started = time.monotonic()
    while not await first.try_acquire("form:ip", rate, burst=3):
        assert time.monotonic() - started < 10, "a refusal pushed the next slot away"
        await asyncio.sleep(0.05)
    assert await second.try_acquire("form:other", rate, burst=1)
