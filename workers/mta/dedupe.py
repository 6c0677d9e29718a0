"""Messages accepted by any MTA instance, shared through Redis.

Each spool remembers the messages it accepted (by `dedupe_key`: Message-ID and recipients),
but a sender that resubmits after a crash may reach another instance (the first one down,
or simply less busy). This registry closes that gap: an instance records every accepted
key in Redis, expiring after the dedupe window, before it answers 250, and looks it up
before spooling.

Redis being unreachable degrades to per-instance de-duplication (logged), never to
refusing mail: losing a message is worse than a rare second copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from workers.mta.message_id_log import legacy_key

logger = logging.getLogger(__name__)
KEY_PREFIX = "warta:mta:mid:"


def _key(key: str) -> str:
    return KEY_PREFIX + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class SharedMessageIds:
    """The cluster-wide memory of accepted messages, by `dedupe_key`.

    Lookups and records are batched like the spool's group commit: while one round trip to
    Redis is under way, the calls that arrive meanwhile wait and then go together in one
    pipeline (GETs and SETs alike), so ten sessions cost about one round trip, not twenty.
    """

    def __init__(self, redis: Redis, window: float, instance: str) -> None:
        self.redis = redis
        self.window = max(1, int(window))
        self.instance = instance
        self._queue: list[tuple[str, str | None, asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def seen(self, key: str, *, legacy: bool = False) -> str | None:
        """`instance/queue id` of an earlier acceptance by any instance, else None.

        `legacy`: also look the bare Message-ID up (in the same round trip), as a version
        before `dedupe_key` recorded it; for the window after an upgrade from one.
        """
        lookups = [self._submit(_key(key), None)]
        if legacy and (bare := legacy_key(key)) is not None:
            lookups.append(self._submit(_key(bare), None))
        for value in await asyncio.gather(*lookups):
            if value is not None:
                return value.decode() if isinstance(value, bytes) else str(value)
        return None

    async def remember(self, key: str, queue_id: str) -> None:
        """Record an acceptance for the dedupe window."""
        await self._submit(_key(key), f"{self.instance}/{queue_id}")

    async def _submit(self, key: str, value: str | None) -> Any:
        """GET ``key`` (``value`` None) or SET it, in the next round trip."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((key, value, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        # A cancelled caller cancels its own future only: the round trip runs in `_drain`'s
        # task, which skips answered or cancelled futures (a SET queued is still sent).
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[str, str | None, asyncio.Future[Any]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                results = await self._round_trip([(key, value) for key, value, _ in batch])
                for (_, _, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._task = None
            for _, _, future in batch + self._queue:  # unanswered only if cancelled
                if not future.done():
                    future.cancel()
            self._queue = []

    async def _round_trip(self, items: list[tuple[str, str | None]]) -> list[Any]:
        """Run the GETs and SETs; Redis unreachable reads as "not seen" (logged)."""
        try:
            if len(items) == 1:
                key, value = items[0]
                if value is None:
                    return [await self.redis.get(key)]
                await self.redis.set(key, value, ex=self.window)
                return [None]
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, value in items:
                    if value is None:
                        pipe.get(key)
                    else:
                        pipe.set(key, value, ex=self.window)
                return list(await pipe.execute())
        except (RedisError, OSError):
            lookups = sum(1 for _, value in items if value is None)
            if lookups:
                logger.warning("Redis unreachable: Message-ID checked against this spool only")
            if lookups < len(items):
                logger.warning(
                    "Redis unreachable: %d Message-ID(s) known to this spool only",
                    len(items) - lookups,
                )
            return [None] * len(items)
