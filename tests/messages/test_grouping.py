"""Group commit of POST /messages: requests that arrive together share one transaction, and
each still gets its own answer (its own rows, or its own error).

Database failures are injected with SQLAlchemy's own events on the real engine (a COMMIT
that fails, a pool with no connection left), never by replacing our code.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from arq.connections import ArqRedis, RedisSettings, create_pool
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.api.schemas.messages import MessageCreate
from app.core.errors import Invalid
from app.core.jobs import PRIORITY_QUEUE
from app.core.settings import Settings
from app.mail.identity import site_identity
from app.messages import service
from app.messages.grouping import DatabaseUnavailable, GroupStore, StoreUnconfirmed
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


class CommitFault:
    """The next COMMIT of a transaction that inserted messages fails, once: either the server
    refused it (rolled back, as PostgreSQL does on a serialization failure), or it committed
    and its answer was lost (the connection dropped after it)."""

    def __init__(self, *, answer_lost: bool) -> None:
        self.answer_lost = answer_lost
        self.fired = False

    @contextmanager
    def on(self, target: Engine | type[Engine]) -> Iterator[None]:
        """Armed on `target` (an engine, or every engine) for the block."""
        hooks: list[tuple[str, Callable[..., None]]] = [
            ("before_cursor_execute", self._executing),
            ("commit", self._commit),
            ("rollback", self._rollback),
        ]
        for name, hook in hooks:
            event.listen(target, name, hook)
        try:
            yield
        finally:
            for name, hook in hooks:
                event.remove(target, name, hook)

    def _executing(self, conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO MESSAGES"):
            conn.info["inserted_messages"] = True

    def _rollback(self, conn: Connection) -> None:
        conn.info.pop("inserted_messages", None)

    def _commit(self, conn: Connection) -> None:
        if not conn.info.pop("inserted_messages", False) or self.fired:
            return
        self.fired = True
        if self.answer_lost:  # the server commits, the answer never arrives
            conn.engine.dialect.do_commit(conn.connection)
            raise sa.exc.OperationalError("COMMIT", None, ConnectionResetError("connection lost"))
        conn.engine.dialect.do_rollback(conn.connection)  # the server ends what it refuses
        refusal = Exception("could not serialize access due to read/write dependencies")
        raise sa.exc.DBAPIError("COMMIT", None, refusal)


@contextmanager
def counted_commits(engine: AsyncEngine) -> Iterator[list[int]]:
    """[number of COMMITs on `engine` during the block]."""
    commits = [0]

    def count(_conn: Connection) -> None:
        commits[0] += 1

    event.listen(engine.sync_engine, "commit", count)
    try:
        yield commits
    finally:
        event.remove(engine.sync_engine, "commit", count)


@contextmanager
def connections_at_once(engine: AsyncEngine) -> Iterator[list[int]]:
    """[most connections checked out of `engine`'s pool at the same time during the block]."""
    now, most = [0], [0]

    def checkout(*_: Any) -> None:
        now[0] += 1
        most[0] = max(most[0], now[0])

    def checkin(*_: Any) -> None:
        now[0] -= 1

    event.listen(engine.sync_engine, "checkout", checkout)
    event.listen(engine.sync_engine, "checkin", checkin)
    try:
        yield most
    finally:
        event.remove(engine.sync_engine, "checkout", checkout)
        event.remove(engine.sync_engine, "checkin", checkin)


@asynccontextmanager
async def queue(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        yield pool
    finally:
        await pool.aclose()


async def _prepared(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, addresses: list[str]
) -> list[service.Prepared]:
    site = site_identity(settings)
    async with sessionmaker() as session:
        return [await service.prepare(session, settings, site, _request(to)) for to in addresses]


async def _stored(sessionmaker: async_sessionmaker[AsyncSession]) -> collections.Counter[str]:
    """How many message rows each address has."""
    async with sessionmaker() as session:
        return collections.Counter((await session.scalars(sa.select(Message.to_email))).all())


async def _queued_ids(pool: ArqRedis) -> list[int]:
    return sorted(
        i for job in await pool.queued_jobs(queue_name=PRIORITY_QUEUE) for i in job.args[0]
    )


@pytest.mark.parametrize("answer_lost", [True, False], ids=["committed-answer-lost", "refused"])
async def test_a_failed_commit_fails_every_request_of_its_group_and_stores_nothing_twice(
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_url: str,
    answer_lost: bool,
) -> None:
    addresses = [f"c{i}@example.org" for i in range(5)]
    prepared = await _prepared(sessionmaker, settings, addresses)
    async with queue(redis_url) as pool:
        store = GroupStore(sessionmaker, settings, site_identity(settings), GroupEnqueuer(pool))
        fault = CommitFault(answer_lost=answer_lost)
        with fault.on(engine.sync_engine):
            results = await asyncio.gather(
                *(store.submit(None, item) for item in prepared), return_exceptions=True
            )
        assert fault.fired
        # Committed (once) or not at all; never stored again behind the unconfirmed COMMIT.
        assert await _stored(sessionmaker) == collections.Counter(addresses if answer_lost else [])
        assert all(isinstance(result, StoreUnconfirmed) for result in results), results
        assert "may have been stored" in str(results[0])
        assert await _queued_ids(pool) == []  # committed rows are left to the resume cron
        # The store goes on: the next group is stored as usual.
        (later,) = await _prepared(sessionmaker, settings, ["later@example.org"])
        (row,) = await store.submit(None, later)
        assert await _queued_ids(pool) == [row.id]


async def test_an_unconfirmed_commit_answers_503_and_the_message_is_there_once(
    client: httpx.AsyncClient,
) -> None:
    fault = CommitFault(answer_lost=True)
    with fault.on(Engine):  # the app's engine is made by the app
        answer = await client.post(
            "/api/v1/messages",
            json={
                "from": "shop@example.net",
                "to": "lost@example.org",
                "subject": "Hi",
                "text": "x",
            },
        )
    assert fault.fired
    assert answer.status_code == 503, answer.text
    problem = answer.json()
    assert problem["title"] == "Service unavailable"
    assert "may have been stored" in problem["detail"]
    assert "Idempotency-Key" in problem["detail"]
    found = await client.get("/api/v1/messages", params={"to": "lost@example.org"})
    assert [m["to_email"] for m in found.json()["items"]] == ["lost@example.org"]


def _poison(kind: str, prepared: service.Prepared) -> tuple[int | None, service.Prepared]:
    """A request its group's transaction fails on, as (API key id, request)."""
    if kind == "unbuildable":  # a header the MIME builder refuses, found after the INSERT
        frame = dataclasses.replace(prepared.frame, headers={"X-Bad": "a\r\nInjected: 1"})
        return None, dataclasses.replace(prepared, frame=frame)
    return 999_999, prepared  # its API key was deleted meanwhile: a foreign key violation


@pytest.mark.parametrize("kind", ["unbuildable", "deleted-api-key"])
async def test_a_request_that_fails_a_large_group_fails_alone_and_the_others_are_stored_once(
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_url: str,
    kind: str,
) -> None:
    addresses = [f"p{i}@example.org" for i in range(16)]
    prepared = await _prepared(sessionmaker, settings, addresses)
    submitted: list[tuple[int | None, service.Prepared]] = [(None, item) for item in prepared]
    submitted[5] = _poison(kind, prepared[5])
    async with queue(redis_url) as pool:
        store = GroupStore(sessionmaker, settings, site_identity(settings), GroupEnqueuer(pool))
        with counted_commits(engine) as commits, connections_at_once(engine) as most:
            results = await asyncio.gather(
                *(store.submit(key, item) for key, item in submitted), return_exceptions=True
            )
        expected = Invalid if kind == "unbuildable" else sa.exc.IntegrityError
        assert isinstance(results[5], expected), results[5]
        good = [result for i, result in enumerate(results) if i != 5]
        assert all(isinstance(rows, list) and len(rows) == 1 for rows in good), good
        assert await _stored(sessionmaker) == collections.Counter(addresses[:5] + addresses[6:])
        ids = sorted(rows[0].id for rows in good if isinstance(rows, list))
        assert await _queued_ids(pool) == ids
    # Found by halving (16, 8, 4, 2, 1): one transaction per half without it, not one per
    # request; and one transaction at a time, not a connection per request of the group.
    assert (commits[0], most[0]) == (4, 1)


async def test_a_database_without_a_free_connection_fails_the_group_at_once(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    """Not a request's fault: no half is tried again, each waiting for the pool in turn."""
    addresses = [f"u{i}@example.org" for i in range(4)]
    prepared = await _prepared(sessionmaker, settings, addresses)
    tiny = create_async_engine(settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with queue(redis_url) as pool, tiny.connect() as held:
            await held.execute(sa.text("SELECT 1"))  # the pool's only connection, kept
            store = GroupStore(
                async_sessionmaker(tiny), settings, site_identity(settings), GroupEnqueuer(pool)
            )
            results = await asyncio.gather(
                *(store.submit(None, item) for item in prepared), return_exceptions=True
            )
            assert all(isinstance(result, DatabaseUnavailable) for result in results), results
            assert "nothing was stored" in str(results[0])
    finally:
        await tiny.dispose()
    assert await _stored(sessionmaker) == collections.Counter()
