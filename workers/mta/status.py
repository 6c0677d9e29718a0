"""What an MTA instance publishes for the queue API and /metrics, and the commands it obeys.

Each instance owns its spool, so the API cannot read queues directly: every instance writes
a snapshot to Redis each second, less often when its queue is large (expiring, so a dead
instance disappears), and listens on a channel for operator actions (flush, suspend, resume
a destination; delete or bounce a message). Nothing here decides who gets mail; it only
reports and relays commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from redis.asyncio import Redis

from workers.mta.control import COMMANDS, SNAPSHOT_KEY
from workers.mta.delivery import DeliveryAgent
from workers.mta.spool import QueueId, Spool

logger = logging.getLogger(__name__)
PUBLISH_EVERY = 1.0
"""Seconds between two snapshots while taking one is cheap."""
PUBLISH_SHARE = 0.01
"""The share of the event loop's time snapshots may take: the walk visits every scheduled
envelope, so a large deferred queue is published less often, down to `PUBLISH_AT_LEAST_EVERY`."""
SNAPSHOT_TTL = 10
"""Seconds a snapshot lives in Redis: an instance that stops publishing drops out of the API."""
PUBLISH_AT_LEAST_EVERY = SNAPSHOT_TTL / 2
"""However costly the walk, a live instance publishes within this many seconds."""


def instance_name() -> str:
    """host:pid — unique per running MTA."""
    return f"{socket.gethostname()}:{os.getpid()}"


def snapshot(agent: DeliveryAgent, spool: Spool, now: float) -> dict[str, Any]:
    """Counters, spool figures and per-domain queue state of one instance."""
    domains: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"queued": 0, "deferred": 0, "oldest_age": 0.0}
    )
    for _, _, envelope in agent.pending_envelopes():
        for recipient in envelope.pending():
            entry = domains[recipient.rpartition("@")[2].lower()]
            entry["queued"] += 1
            if envelope.states[recipient].attempts:
                entry["deferred"] += 1
            entry["oldest_age"] = max(entry["oldest_age"], now - envelope.received_at)
    destinations = {key: asdict(state) for key, state in agent.shaping.snapshot(now).items()}
    return {
        "instance": instance_name(),
        "updated_at": now,
        "accepted": spool.stats.accepted,
        "delivered": agent.stats.delivered,
        "deferred": agent.stats.deferred,
        "failed": agent.stats.failed,
        "queue_size": agent.queued(),
        "fsync_seconds_total": spool.stats.fsync_seconds_total,
        "fsync_commits": spool.stats.commits,
        "fsync_last_seconds": spool.stats.last_fsync_seconds,
        "domains": dict(domains),
        "destinations": destinations,
        "unreachable": agent.unreachable.snapshot(now),
    }


def publish_interval(cost: float) -> float:
    """Seconds until the next snapshot, after one that took `cost` seconds of the loop.

    Once a second while that is under `PUBLISH_SHARE` of the time; less often as the queue
    grows, but at least every `PUBLISH_AT_LEAST_EVERY` seconds whatever it costs (a 200 ms
    walk is then 4 % of the loop), so a live instance never drops out.
    """
    return min(max(PUBLISH_EVERY, cost / PUBLISH_SHARE), PUBLISH_AT_LEAST_EVERY)


class StatusPublisher:
    """Publishes snapshots and applies commands for one MTA instance."""

    def __init__(self, redis: Redis, agent: DeliveryAgent, spool: Spool) -> None:
        self.redis = redis
        self.agent = agent
        self.spool = spool
        self.key = SNAPSHOT_KEY + instance_name()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Begin publishing and listening."""
        self._tasks = [
            asyncio.create_task(self._publish_forever(), name="mta-status"),
            asyncio.create_task(self._listen(), name="mta-commands"),
        ]

    async def stop(self) -> None:
        """Stop and withdraw this instance's snapshot."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.redis.delete(self.key)
        await self.redis.aclose()

    async def _publish_forever(self) -> None:
        while True:
            wait = await self.publish()
            await asyncio.sleep(wait)

    async def publish(self) -> float:
        """Write one snapshot; the seconds to wait before the next (`publish_interval`).

        A failure is logged and retried a second later, so that a Redis that is briefly down
        does not leave the instance out of the API for longer than the snapshot's expiry.
        """
        try:
            started = time.perf_counter()
            data = json.dumps(snapshot(self.agent, self.spool, time.time()))
            cost = time.perf_counter() - started
            await self.redis.set(self.key, data, ex=SNAPSHOT_TTL)
        except Exception:  # Redis down: the MTA keeps delivering regardless
            logger.warning("could not publish MTA status", exc_info=True)
            return PUBLISH_EVERY
        return publish_interval(cost)

    async def _listen(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(COMMANDS)
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                try:
                    await self.apply(json.loads(message["data"]))
                except Exception:
                    logger.exception("bad MTA command %r", message.get("data"))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def apply(self, command: dict[str, Any]) -> None:
        """Carry out one operator action if it concerns this instance."""
        action = command.get("action")
        now = time.time()
        if action in ("suspend", "resume", "flush"):
            key = str(command["destination"])
            if action == "suspend":
                until = float(command.get("until") or now + 3600)
                self.agent.shaping.for_destination(key).suspend(until)
            elif action == "resume":
                self.agent.shaping.for_destination(key).resume()
            else:
                self.agent.flush(domain=command.get("domain"))
        elif action in ("delete", "bounce"):
            await self.agent.drop(
                QueueId(str(command["queue_id"])),
                bounce=action == "bounce",
                reason=str(command.get("reason") or f"{action}d by an operator"),
            )
