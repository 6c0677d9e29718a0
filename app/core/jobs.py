"""The job queue: arq on Redis, a bulk queue for campaigns and a priority queue for the rest.

Jobs carry ids only and have deterministic job ids, so enqueueing the same work twice is a
no-op while the first is queued or running.
"""

from __future__ import annotations

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import Job

BULK_QUEUE = "warta:bulk"
PRIORITY_QUEUE = "warta:priority"
_EXISTS_PER_ROUND_TRIP = 1000


def batch_job_id(campaign_id: int, low: int) -> str:
    """The one job that sends ledger rows [low, low + span) of a campaign."""
    return f"warta:batch:{campaign_id}:{low}"


async def enqueue_start(pool: ArqRedis, campaign_id: int) -> None:
    """Ask a worker to start a campaign now (the scheduler would, within a second)."""
    await pool.enqueue_job(
        "start_campaign",
        campaign_id,
        _job_id=f"warta:start:{campaign_id}",
        _queue_name=PRIORITY_QUEUE,
    )


async def enqueue_batches(pool: ArqRedis, campaign_id: int, ranges: list[tuple[int, int]]) -> int:
    """Enqueue a batch job per ledger range; returns how many were new.

    The reconciler calls this every five seconds for every running campaign, with every
    range that still holds work: one pipelined round trip first finds the jobs arq would
    refuse anyway (queued, running, or with a result kept), and only the others go through
    arq's enqueue (a WATCH transaction, a round trip each, which checks again). A
    million-recipient campaign asked arq 2,000 times every five seconds before.
    """
    ids = [batch_job_id(campaign_id, low) for low, _ in ranges]
    present: list[int] = []
    for start in range(0, len(ids), _EXISTS_PER_ROUND_TRIP):
        async with pool.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + _EXISTS_PER_ROUND_TRIP]:
                pipe.exists(job_key_prefix + job_id, result_key_prefix + job_id)
            present += await pipe.execute()
    new = 0
    for (low, high), job_id, found in zip(ranges, ids, present, strict=True):
        if found:
            continue
        job = await pool.enqueue_job(
            "send_batch",
            campaign_id,
            low,
            high,
            _job_id=job_id,
            _queue_name=BULK_QUEUE,
        )
        new += job is not None
    return new


async def enqueue_optin(pool: ArqRedis, subscriber_id: int, list_ids: list[int]) -> bool:
    """Ask a worker to send a double opt-in confirmation mail (priority queue); False if queued."""
    lists = ",".join(str(list_id) for list_id in list_ids)
    job = await pool.enqueue_job(
        "send_optin_confirmation",
        subscriber_id,
        list_ids,
        _job_id=f"warta:optin:{subscriber_id}:{lists}",
        _queue_name=PRIORITY_QUEUE,
    )
    return job is not None


async def enqueue_test_send(pool: ArqRedis, campaign_id: int, addresses: list[str]) -> Job:
    """Ask a priority worker to send a campaign to test addresses; the job reports the replies."""
    job = await pool.enqueue_job("send_test", campaign_id, addresses, _queue_name=PRIORITY_QUEUE)
    assert job is not None  # random job ids never collide
    return job


MESSAGE_JOB_SIZE = 100  # message ids per send_messages job


async def enqueue_messages(pool: ArqRedis, message_ids: list[int]) -> None:
    """Ask the priority workers to send messages now, in jobs of up to 100 ids.

    The job id names the first message: enqueueing the same rows again while their job is
    queued is a no-op, and a worker holds a lease on each row it sends in any case.
    """
    for start in range(0, len(message_ids), MESSAGE_JOB_SIZE):
        chunk = message_ids[start : start + MESSAGE_JOB_SIZE]
        await pool.enqueue_job(
            "send_messages",
            chunk,
            _job_id=f"warta:messages:{chunk[0]}",
            _queue_name=PRIORITY_QUEUE,
        )
