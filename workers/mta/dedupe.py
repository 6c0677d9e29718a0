"""Message-IDs accepted by any MTA instance, shared through Redis.

Each spool remembers the Message-IDs it accepted, but a sender that resubmits after a
crash may reach another instance (the first one down, or simply less busy). This registry
closes that gap: an instance records every accepted Message-ID in Redis, expiring after
the dedupe window, before it answers 250, and looks it up before spooling.

Redis being unreachable degrades to per-instance de-duplication (logged), never to
refusing mail: losing a message is worse than a rare second copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from workers.mta.spool import normalise_message_id

logger = logging.getLogger(__name__)
KEY_PREFIX = "warta:mta:mid:"


def _key(message_id: str) -> str:
    normal = normalise_message_id(message_id)
    return KEY_PREFIX + hashlib.sha256(normal.encode("utf-8", "surrogateescape")).hexdigest()


class SharedMessageIds:
    """The cluster-wide memory of accepted Message-IDs.

    Lookups and records are batched like the spool's group commit: while one round trip to
    Redis is under way, the calls that arrive meanwhile wait and then go together (one
    MGET, one pipeline of SETs), so ten sessions cost about one round trip, not ten.
    """

    def __init__(self, redis: Redis, window: float, instance: str) -> None:
        self.redis = redis
        self.window = max(1, int(window))
        self.instance = instance
        self._lookups = _Batcher(self._get_many)
        self._records = _Batcher(self._set_many)

    async def seen(self, message_id: str) -> str | None:
        """`instance/queue id` of an earlier acceptance by any instance, else None."""
        value = await self._lookups.submit((_key(message_id), ""))
        return value.decode() if isinstance(value, bytes) else value

    async def remember(self, message_id: str, queue_id: str) -> None:
        """Record an acceptance for the dedupe window."""
        await self._records.submit((_key(message_id), f"{self.instance}/{queue_id}"))

    async def _get_many(self, items: list[tuple[str, str]]) -> list[Any]:
        try:
            return list(await self.redis.mget([key for key, _ in items]))
        except (RedisError, OSError):
            logger.warning("Redis unreachable: Message-ID checked against this spool only")
            return [None] * len(items)

    async def _set_many(self, items: list[tuple[str, str]]) -> list[Any]:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(key, value, ex=self.window)
                await pipe.execute()
        except (RedisError, OSError):
            logger.warning(
                "Redis unreachable: %d Message-ID(s) known to this spool only", len(items)
            )
        return [None] * len(items)


class _Batcher:
    """One call of `run` at a time over every item submitted while the previous one ran."""

    def __init__(self, run: Callable[[list[tuple[str, str]]], Awaitable[list[Any]]]) -> None:
        self._run = run
        self._queue: list[tuple[tuple[str, str], asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: tuple[str, str]) -> Any:
        """Queue ``item``; its result once the batch holding it has run."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        # Shielded: a cancelled caller must not cancel the batch the others wait on.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    results = await self._run([item for item, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._task = None
