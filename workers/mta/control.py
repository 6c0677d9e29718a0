"""Reading what the MTA instances publish in Redis, and sending them operator commands."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from redis.asyncio import Redis

SNAPSHOT_KEY = "warta:mta:status:"  # + instance; written by workers/mta/status.py
COMMANDS = "warta:mta:commands"


async def snapshots(redis: Redis) -> list[dict[str, Any]]:
    """The latest snapshot of every live MTA instance."""
    keys = [key async for key in redis.scan_iter(match=SNAPSHOT_KEY + "*", count=100)]
    if not keys:
        return []
    values = await redis.mget(keys)
    return [json.loads(value) for value in values if value]


def aggregate(found: list[dict[str, Any]]) -> dict[str, Any]:
    """One view over all instances: per instance, per recipient domain, per destination."""
    domains: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"queued": 0, "deferred": 0, "oldest_age": 0.0}
    )
    destinations: dict[str, dict[str, Any]] = {}
    instances = []
    for snap in found:
        instances.append(
            {
                name: snap.get(name)
                for name in (
                    "instance",
                    "updated_at",
                    "queue_size",
                    "accepted",
                    "delivered",
                    "deferred",
                    "failed",
                    "unreachable",
                )
            }
        )
        for domain, entry in snap.get("domains", {}).items():
            total = domains[domain]
            total["queued"] += entry["queued"]
            total["deferred"] += entry["deferred"]
            total["oldest_age"] = max(total["oldest_age"], entry["oldest_age"])
        for key, state in snap.get("destinations", {}).items():
            destinations.setdefault(key, {**state, "instances": 0})["instances"] += 1
    return {
        "instances": instances,
        "domains": [{"domain": d, **v} for d, v in sorted(domains.items())],
        "destinations": [destinations[k] for k in sorted(destinations)],
    }


async def command(redis: Redis, action: str, **fields: Any) -> int:
    """Broadcast an operator command; returns how many MTA instances heard it."""
    return int(await redis.publish(COMMANDS, json.dumps({"action": action, **fields})))
