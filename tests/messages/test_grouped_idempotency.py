"""POST /messages with an Idempotency-Key joins the group commit: the keys of a group are
claimed in its transaction and answered with its rows, and the semantics stay exact (same
key and body: the same answer; another body: 422; a failed request leaves its key unused)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core import api_keys
from app.core.errors import Invalid
from app.core.settings import Settings
from app.mail.identity import site_identity
from app.messages import idempotency
from app.messages.grouping import GroupStore, answer
from app.messages.handoff import GroupEnqueuer
from app.models import IdempotencyKey, Message
from tests.messages.test_grouping import _prepared, counted_commits, queue

MESSAGE = {
    "from": "Shop <shop@example.com>",
    "subject": "Receipt {{ order }}",
    "text": "Order {{ order }}",
    "data": {"order": 42},
}


async def _key_id(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        key, _ = await api_keys.create_key(session, "app", ["messages:write"])
        await session.commit()
        return key.id


def _claim(api_key_id: int, key: str) -> idempotency.Claim:
    return idempotency.Claim(api_key_id, key, f"fingerprint of {key}")


async def _answers(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    async with sessionmaker() as session:
        rows = await session.scalars(sa.select(IdempotencyKey))
        return {row.key: (row.status_code, row.response) for row in rows}


async def test_keys_of_a_group_are_claimed_and_answered_in_its_one_transaction(
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_url: str,
) -> None:
    api_key_id = await _key_id(sessionmaker)
    prepared = await _prepared(sessionmaker, settings, [f"k{i}@example.org" for i in range(6)])
    async with queue(redis_url) as pool:
        store = GroupStore(sessionmaker, settings, site_identity(settings), GroupEnqueuer(pool))
        with counted_commits(engine) as commits:
            results = await asyncio.gather(
                *(store.submit_once(_claim(api_key_id, f"key-{i}"), item)
                  for i, item in enumerate(prepared)),
                store.submit(None, (await _prepared(sessionmaker, settings, ["x@example.org"]))[0]),
            )  # fmt: skip
    assert commits[0] == 1
    assert all(rows is not None and len(rows) == 1 for rows in results)
    stored = await _answers(sessionmaker)
    assert stored == {
        f"key-{i}": (202, answer(rows)) for i, rows in enumerate(results[:6]) if rows is not None
    }


async def test_a_key_used_before_or_twice_in_a_group_is_left_to_settle_alone(
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_url: str,
) -> None:
    api_key_id = await _key_id(sessionmaker)
    first, second, third = await _prepared(
        sessionmaker, settings, ["a@example.org", "b@example.org", "c@example.org"]
    )
    async with queue(redis_url) as pool:
        store = GroupStore(sessionmaker, settings, site_identity(settings), GroupEnqueuer(pool))
        with counted_commits(engine) as commits:
            one, two = await asyncio.gather(
                store.submit_once(_claim(api_key_id, "same"), first),
                store.submit_once(_claim(api_key_id, "same"), second),
            )
        # The second waited for the next group, and found the key answered there.
        assert commits[0] == 2
        assert one is not None and two is None
        assert await store.submit_once(_claim(api_key_id, "same"), third) is None
    async with sessionmaker() as session:
        stored = (await session.scalars(sa.select(Message.to_email))).all()
    assert stored == ["a@example.org"]
    assert await _answers(sessionmaker) == {"same": (202, answer(one))}


async def test_a_request_with_a_key_that_fails_in_a_group_fails_alone_and_leaves_its_key_unused(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    api_key_id = await _key_id(sessionmaker)
    good, bad = await _prepared(sessionmaker, settings, ["g@example.org", "bad@example.org"])
    bad = dataclasses.replace(
        bad, frame=dataclasses.replace(bad.frame, headers={"X-Bad": "a\r\nInjected: 1"})
    )
    async with queue(redis_url) as pool:
        store = GroupStore(sessionmaker, settings, site_identity(settings), GroupEnqueuer(pool))
        results = await asyncio.gather(
            store.submit_once(_claim(api_key_id, "good"), good),
            store.submit_once(_claim(api_key_id, "bad"), bad),
            return_exceptions=True,
        )
    assert isinstance(results[1], Invalid), results[1]
    assert list(await _answers(sessionmaker)) == ["good"]


async def test_concurrent_requests_with_keys_are_answered_and_replayed_exactly(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async def send(key: str, body: dict[str, Any]) -> httpx.Response:
        return await client.post("/api/v1/messages", json=body, headers={"Idempotency-Key": key})

    bodies = {f"order-{i}": {**MESSAGE, "to": f"user{i}@example.com"} for i in range(10)}
    first = await asyncio.gather(*(send(key, body) for key, body in bodies.items()))
    assert [r.status_code for r in first] == [202] * 10, [r.text for r in first]
    assert [r.json()["messages"][0]["to"] for r in first] == [b["to"] for b in bodies.values()]
    # Replays (concurrent with a new key, and with the same key twice in one burst).
    again = await asyncio.gather(
        *(send(key, body) for key, body in bodies.items()),
        send("order-0", bodies["order-0"]),
        send("fresh", {**MESSAGE, "to": "fresh@example.com"}),
    )
    for response, earlier in zip(again[:10], first, strict=True):
        assert response.status_code == 202
        assert response.json() == earlier.json()
        assert response.headers["Idempotent-Replayed"] == "true"
    assert again[10].json() == first[0].json()
    assert again[11].status_code == 202 and "Idempotent-Replayed" not in again[11].headers
    other = await send("order-3", {**MESSAGE, "to": "someone@example.com"})
    assert other.status_code == 422
    async with sessionmaker() as session:
        count = await session.scalar(sa.select(sa.func.count()).select_from(Message))
    assert count == 11


async def test_a_request_with_a_key_that_does_not_render_is_answered_as_before(
    client: httpx.AsyncClient,
) -> None:
    good = {**MESSAGE, "to": "a@example.com"}
    first = await client.post("/api/v1/messages", json=good, headers={"Idempotency-Key": "k"})
    assert first.status_code == 202
    # Another body that would not render: the key's answer (422, another body) comes first.
    broken = {**good, "text": "{{ missing.name }}"}
    reused = await client.post("/api/v1/messages", json=broken, headers={"Idempotency-Key": "k"})
    assert reused.status_code == 422 and "Idempotency-Key" in reused.text
    fresh = await client.post("/api/v1/messages", json=broken, headers={"Idempotency-Key": "n"})
    assert fresh.status_code == 422 and "Idempotency-Key" not in fresh.text
    retried = await client.post("/api/v1/messages", json=good, headers={"Idempotency-Key": "n"})
    assert retried.status_code == 202  # the failed request left its key unused
