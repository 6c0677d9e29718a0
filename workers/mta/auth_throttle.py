"""Brute-force defence for SMTP AUTH: failures counted per client address and per login.

After `limit` failed attempts within `window` seconds from one address, or for one login
from anywhere, further AUTH from that address or for that login is refused with 421 and
the connection closed until the window has passed. The counters live in Redis, so every
MTA process (and instance) shares them; without Redis each process counts on its own.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 10
DEFAULT_WINDOW = 600.0
KEY_PREFIX = "warta:mta:authfail:"


def _keys(client: str, login: str) -> tuple[str, str]:
    digest = hashlib.sha256(login.encode("utf-8", "replace")).hexdigest()[:32]
    return f"{KEY_PREFIX}ip:{client}", f"{KEY_PREFIX}login:{digest}"


@dataclass
class AuthThrottle:
    """Counts failed AUTH attempts; `blocked` says whether a new attempt may be tried."""

    redis: Redis | None
    limit: int = DEFAULT_LIMIT
    window: float = DEFAULT_WINDOW
    _local: dict[str, tuple[int, float]] = field(default_factory=dict)

    async def blocked(self, client: str, login: str | None) -> bool:
        """Whether the address (or the login, once known) has used up its failures."""
        keys = _keys(client, login or "")
        wanted = list(keys) if login is not None else [keys[0]]
        counts = await self._get(wanted)
        return any(count >= self.limit for count in counts)

    async def failed(self, client: str, login: str) -> None:
        """Count one failure against the address and the login; log when a lockout starts."""
        counts = await self._incr(list(_keys(client, login)))
        if any(count == self.limit for count in counts):
            logger.warning(
                "SMTP AUTH: %d failures from %s or for login %r within %.0f s; locked out",
                self.limit,
                client,
                login[:64],
                self.window,
            )

    async def _get(self, keys: list[str]) -> list[int]:
        if self.redis is not None:
            try:
                values = await self.redis.mget(keys)
                return [int(v) if v is not None else 0 for v in values]
            except RedisError:
                logger.warning("SMTP AUTH throttle: Redis unavailable, counting locally")
        now = time.monotonic()
        counts = []
        for key in keys:
            count, until = self._local.get(key, (0, 0.0))
            counts.append(count if until > now else 0)
        return counts

    async def _incr(self, keys: list[str]) -> list[int]:
        if self.redis is not None:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for key in keys:
                        pipe.incr(key)
                        pipe.expire(key, int(self.window), nx=True)
                    results = await pipe.execute()
                return [int(results[i]) for i in range(0, len(results), 2)]
            except RedisError:
                logger.warning("SMTP AUTH throttle: Redis unavailable, counting locally")
        now = time.monotonic()
        counts = []
        for key in keys:
            count, until = self._local.get(key, (0, 0.0))
            if until <= now:
                count, until = 0, now + self.window
            self._local[key] = (count + 1, until)
            counts.append(count + 1)
        return counts
