"""Message-IDs accepted by any MTA instance, shared through Redis.

Each spool remembers the Message-IDs it accepted, but a sender that resubmits after a
crash may reach another instance (the first one down, or simply less busy). This registry
closes that gap: an instance records every accepted Message-ID in Redis, expiring after
the dedupe window, before it answers 250, and looks it up before spooling.

Redis being unreachable degrades to per-instance de-duplication (logged), never to
refusing mail: losing a message is worse than a rare second copy.
"""

from __future__ import annotations

import hashlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from workers.mta.spool import normalise_message_id

logger = logging.getLogger(__name__)
KEY_PREFIX = "warta:mta:mid:"


def _key(message_id: str) -> str:
    normal = normalise_message_id(message_id)
    return KEY_PREFIX + hashlib.sha256(normal.encode("utf-8", "surrogateescape")).hexdigest()


class SharedMessageIds:
    """The cluster-wide memory of accepted Message-IDs."""

    def __init__(self, redis: Redis, window: float, instance: str) -> None:
        self.redis = redis
        self.window = max(1, int(window))
        self.instance = instance

    async def seen(self, message_id: str) -> str | None:
        """`instance/queue id` of an earlier acceptance by any instance, else None."""
        try:
            value = await self.redis.get(_key(message_id))
        except (RedisError, OSError):
            logger.warning("Redis unreachable: Message-ID checked against this spool only")
            return None
        return value.decode() if isinstance(value, bytes) else value

    async def remember(self, message_id: str, queue_id: str) -> None:
        """Record an acceptance for the dedupe window."""
        try:
            await self.redis.set(_key(message_id), f"{self.instance}/{queue_id}", ex=self.window)
        except (RedisError, OSError):
            logger.warning("Redis unreachable: Message-ID %s known to this spool only", message_id)
