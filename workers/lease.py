"""A batch job's short lease, renewed by a heartbeat while the batch works.

arq marks a running job with an in-progress key that expires after the longest job timeout
plus 10 s; a job whose worker died waits that long before another worker may take it. The
bulk worker sets a short expiry instead (`WARTA_BATCH_LEASE`), and while a batch runs this
heartbeat renews it, so a dead worker's batches are free again within one lease.

The key holds a token of this run: a heartbeat late enough that the lease expired (and
another worker may have taken the job) finds a stranger's token, renews nothing, and stops
the batch. Even then nothing is sent twice: rows are claimed in the ledger and resubmitted
with the same Message-ID, which the MTA refuses to queue twice.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine
from typing import Any, TypeVar

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

T = TypeVar("T")
HEARTBEATS_PER_LEASE = 3

# Renew only our own lease: a key that expired or belongs to another run is left alone.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class LeaseLost(Exception):
    """The job's lease expired before the heartbeat renewed it; the run was stopped."""


async def run_leased(redis: Redis, job_id: str, lease: float, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` while renewing the job's in-progress lease every third of `lease` seconds."""
    key = in_progress_key_prefix + job_id
    token = secrets.token_hex(8)
    lease_ms = max(1, int(lease * 1000))
    # arq set the key just before the job started; XX: it must still be there to take.
    if not await redis.set(key, token, px=lease_ms, xx=True):
        work.close()
        raise LeaseLost(f"job {job_id}: the lease had expired before the batch started")
    renew = redis.register_script(_RENEW)
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=lease / HEARTBEATS_PER_LEASE)
            if done:
                return task.result()
            if not await renew(keys=[key], args=[token, lease_ms]):
                raise LeaseLost(f"job {job_id}: the lease expired while the batch worked")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
