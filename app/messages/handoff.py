"""Handing stored messages to the workers: one enqueue for the requests of many.

Each request still waits until its ids are in the queue before it answers 202. But while
one enqueue is in flight (three Redis round trips in arq), the ids of the requests that
finish meanwhile wait together and go in the next one: under load, the queue is asked once
per group of requests rather than once per request, and a worker's job carries the ids of
several requests (up to `MESSAGE_JOB_SIZE`), so it sends them as one batch.
"""

from __future__ import annotations

import asyncio

from arq.connections import ArqRedis

from app.core.jobs import enqueue_messages


class GroupEnqueuer:
    """Enqueues `send_messages` jobs for the ids of all requests waiting at that moment."""

    def __init__(self, pool: ArqRedis) -> None:
        self.pool = pool
        self._ids: list[int] = []
        self._waiting: list[asyncio.Future[None]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def enqueue(self, message_ids: list[int]) -> None:
        """Return once `message_ids` are queued; raise what the enqueue raised."""
        if not message_ids:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ids += message_ids
        self._waiting.append(done)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        # A request cancelled meanwhile (client gone) leaves its ids to the flush: they were
        # committed, so they must reach the queue all the same.
        await asyncio.shield(done)

    async def drain(self) -> None:
        """Wait for the enqueue in flight (at shutdown, before the Redis pool closes): its ids
        were committed, and a cancel inside arq's pipeline would leave its connection open."""
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)

    async def _flush(self) -> None:
        while self._ids:
            ids, waiting = self._ids, self._waiting
            self._ids, self._waiting = [], []
            try:
                await enqueue_messages(self.pool, ids)
            except Exception as exc:  # every waiter gets the error, as it would alone
                for future in waiting:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:  # cancelled (shutdown): the resume cron finds the rows
                for future in waiting + self._waiting:
                    future.cancel()
                raise
            for future in waiting:
                if not future.done():
                    future.set_result(None)
