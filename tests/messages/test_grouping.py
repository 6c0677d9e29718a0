"""Group commit of POST /messages: requests that arrive together share one transaction, and
each still gets its own answer (its own rows, or its own error)."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest
import sqlalchemy as sa
from arq.connections import RedisSettings, create_pool
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.schemas.messages import MessageCreate
from app.core.errors import Invalid
from app.core.jobs import PRIORITY_QUEUE
from app.core.settings import Settings
from app.mail.identity import site_identity
from app.messages import service
from app.messages.grouping import GroupStore
from app.messages.handoff import GroupEnqueuer
from app.models import Message


def _request(to: str) -> MessageCreate:
    return MessageCreate.model_validate(
        {
            "from": "shop@example.net",
            "to": to,
            "subject": "Hi {{ n }}",
            "text": "n={{ n }}",
            "data": {"n": to},
        }
    )


async def test_concurrent_requests_each_get_their_own_messages(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    addresses = [f"user{i}@example.org" for i in range(20)]
    answers = await asyncio.gather(
        *(
            client.post(
                "/api/v1/messages",
                json={"from": "shop@example.net", "to": to, "subject": "Hi", "text": to},
            )
            for to in addresses
        )
    )
    assert [a.status_code for a in answers] == [202] * 20
    named = [a.json()["messages"] for a in answers]
    assert [[m["to"] for m in messages] for messages in named] == [[to] for to in addresses]
    async with sessionmaker() as session:
        rows = {
            row.id: row
            for row in await session.scalars(
                sa.select(Message).where(Message.to_email.in_(addresses))
            )
        }
    assert len(rows) == 20
    for to, messages in zip(addresses, named, strict=True):
        row = rows[messages[0]["id"]]
        assert row.to_email == to and row.status.value == "queued"
        assert f"To: {to}".encode() in row.mime and to.encode() in row.mime.split(b"\r\n\r\n", 1)[1]


async def test_a_request_that_fails_in_a_group_fails_alone(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    site = site_identity(settings)
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        store = GroupStore(sessionmaker, settings, site, GroupEnqueuer(pool))
        async with sessionmaker() as session:
            good = [await service.prepare(session, settings, site, _request(f"g{i}@example.org"))
                    for i in range(3)]  # fmt: skip
            bad = await service.prepare(session, settings, site, _request("bad@example.org"))
        # A header the MIME builder refuses: the group's store fails at build time.
        bad = dataclasses.replace(
            bad, frame=dataclasses.replace(bad.frame, headers={"X-Bad": "a\r\nInjected: 1"})
        )
        results = await asyncio.gather(
            store.submit(None, good[0]), store.submit(None, bad), store.submit(None, good[1]),
            store.submit(None, good[2]), return_exceptions=True,
        )  # fmt: skip
        assert isinstance(results[1], Invalid), results[1]
        stored = [results[0], results[2], results[3]]
        assert all(isinstance(rows, list) and len(rows) == 1 for rows in stored), stored
        ids = sorted(rows[0].id for rows in stored if isinstance(rows, list))
        async with sessionmaker() as session:
            found = await session.scalars(sa.select(Message.to_email).order_by(Message.id))
            assert sorted(found.all()) == ["g0@example.org", "g1@example.org", "g2@example.org"]
        queued = await pool.queued_jobs(queue_name=PRIORITY_QUEUE)
        assert sorted(i for job in queued for i in job.args[0]) == ids
    finally:
        await pool.aclose()


@pytest.mark.parametrize(("size", "cap", "transactions"), [(1, 1000, 1), (5, 1000, 1), (5, 2, 3)])
async def test_a_group_is_one_transaction(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_url: str,
    size: int,
    cap: int,
    transactions: int,
) -> None:
    """Requests waiting together share a transaction, up to `cap` messages per group."""
    site = site_identity(settings)
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    commits = 0
    original = sessionmaker.class_.commit

    async def counted(self: AsyncSession) -> None:
        nonlocal commits
        commits += 1
        await original(self)

    try:
        store = GroupStore(sessionmaker, settings, site, GroupEnqueuer(pool), group_messages=cap)
        async with sessionmaker() as session:
            prepared = [await service.prepare(session, settings, site, _request(f"t{i}@example.org"))
                        for i in range(size)]  # fmt: skip
        sessionmaker.class_.commit = counted  # type: ignore[method-assign]
        try:
            await asyncio.gather(*(store.submit(None, item) for item in prepared))
        finally:
            sessionmaker.class_.commit = original  # type: ignore[method-assign]
        assert commits == transactions
        jobs = await pool.queued_jobs(queue_name=PRIORITY_QUEUE)
        assert sum(len(job.args[0]) for job in jobs) == size
        if transactions == 1:
            assert len(jobs) == 1
    finally:
        await pool.aclose()
