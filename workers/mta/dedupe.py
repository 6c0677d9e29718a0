"""Message-IDs accepted by any MTA instance, shared through Redis.

Each spool remembers the Message-IDs it accepted, but a sender that resubmits after a
crash may reach another instance (the first one down, or simply less busy). This registry
closes that gap: an instance records every accepted Message-ID in Redis, expiring after
the dedupe window, before it answers 250, and looks it up before spooling.

Redis being unreachable degrades to per-instance de-duplication (logged), never to
refusing mail: losing a message is worse than a rare second copy.

Acceptances are recorded in batches: every `remember` that arrives while a batch is being
written joins the next one, one pipelined round trip for all of them. One SET a message
queued hundreds of commands on the connection pool under a campaign's load, and each
waiting message held its bytes (~12 MB at 1,600 of them) until its reply.
"""

from __future__ import annotations

import asyncio
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
        self._batch: list[tuple[str, str, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def seen(self, message_id: str) -> str | None:
        """`instance/queue id` of an earlier acceptance by any instance, else None."""
        try:
            value = await self.redis.get(_key(message_id))
        except (RedisError, OSError):
            logger.warning("Redis unreachable: Message-ID checked against this spool only")
            return None
        return value.decode() if isinstance(value, bytes) else value

    async def remember(self, message_id: str, queue_id: str) -> None:
        """Record an acceptance for the dedupe window (returns once Redis has it, or failed).

        The record is written even if the caller is cancelled meanwhile.
        """
        done = asyncio.get_running_loop().create_future()
        self._batch.append((_key(message_id), f"{self.instance}/{queue_id}", done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="shared-message-ids")
        await done

    async def _write(self) -> None:
        """Write batches until none is waiting."""
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for key, value, _ in batch:
                            pipe.set(key, value, ex=self.window)
                        await pipe.execute()
                except (RedisError, OSError):
                    logger.warning(
                        "Redis unreachable: %d Message-IDs known to this spool only", len(batch)
                    )
                except Exception:  # a bug must not leave the sessions waiting for a reply
                    logger.exception("could not share %d Message-IDs", len(batch))
                for _, _, done in batch:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._writer = None
