"""A send-rate limiter shared by every worker through Redis: GCRA in one Lua script.

Each scope (`global`, `campaign:<id>`) keeps one number in Redis, its theoretical
arrival time (TAT): when the scope's reserved messages will all have left at `rate`. An
acquisition moves the TAT on by `count / rate` and tells the caller how long to wait
before its messages may go, so callers queue up fairly and a worker asks once per small
batch rather than once per message. The clock is the Redis server's `TIME`, read inside
the script, so workers on different machines share one clock and one atomic step.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

KEY_PREFIX = "warta:ratelimit:"
GLOBAL_SCOPE = "global"
MICROSECONDS = 1_000_000

# Reads the server clock, then writes: allowed by effects replication, the default from
# Redis 5 (`replicate_commands` turns it on for 3.2-4.x and is a no-op after). Times are
# whole microseconds, stored with %.0f because tostring() keeps only 14 digits. Returns
# the wait in whole microseconds, since Lua numbers become integer replies.
GCRA_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + count * interval
local wait = new_tat - burst * interval - now
if wait < 0 then wait = 0 end
-- Optional ARGV[4]: the longest acceptable wait; beyond it nothing is reserved and the
-- wait comes back negated (so a refused request knows when it would be admitted).
local max_wait = tonumber(ARGV[4])
if max_wait ~= nil and wait > max_wait then return -math.ceil(wait) end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return math.ceil(wait)
"""


def campaign_scope(campaign_id: int | str) -> str:
    """The rate-limit scope of one campaign."""
    return f"campaign:{campaign_id}"


class RateLimiter:
    """Reserves send slots at a rate per scope, shared by all processes using this Redis."""

    def __init__(self, redis: Redis, *, prefix: str = KEY_PREFIX) -> None:
        self._prefix = prefix
        self._script = redis.register_script(GCRA_SCRIPT)

    async def acquire(
        self, key: str, rate: float, count: int = 1, burst: int | None = None
    ) -> float:
        """Reserve `count` messages in scope `key`; seconds to wait before sending them.

        `rate` is messages per second (≤ 0: unlimited, and Redis is not asked). `burst` is
        how many messages may leave at once after an idle spell; by default the batch
        itself, so an idle scope sends a batch at once and banks nothing beyond it.
        """
        if rate <= 0:
            return 0.0
        if count < 1:
            raise ValueError("count must be at least 1")
        burst = count if burst is None else burst
        if burst < 1:
            raise ValueError("burst must be at least 1")
        interval = MICROSECONDS / rate
        wait = await self._script(keys=[self._prefix + key], args=[repr(interval), count, burst])
        return int(wait) / MICROSECONDS

    async def try_acquire(self, key: str, rate: float, burst: int) -> bool:
        """Take one slot in scope `key` if one is free now; a refusal reserves nothing."""
        return await self.admit(key, rate, burst) == 0.0

    async def wait(self, key: str, rate: float, count: int = 1, burst: int | None = None) -> float:
        """Reserve `count` messages and sleep until they may go; return the time slept."""
        delay = await self.acquire(key, rate, count, burst)
        if delay > 0:
            await asyncio.sleep(delay)
        return delay

    async def admit(self, key: str, rate: float, burst: int) -> float:
        """Admit one request in scope `key` (0.0), or the seconds until one would be admitted.

        For request limits (at most `burst` at once, refilled at `rate` per second): unlike
        `acquire`, a refused request reserves nothing, so a client hammering a limit does
        not push its own or anyone's next slot further away. `rate` ≤ 0 admits everything.
        """
        if rate <= 0:
            return 0.0
        if burst < 1:
            raise ValueError("burst must be at least 1")
        interval = MICROSECONDS / rate
        wait = await self._script(keys=[self._prefix + key], args=[repr(interval), 1, burst, 0])
        return max(0, -int(wait)) / MICROSECONDS
