"""The authentication cache: a verified key skips the query for a moment, and a revocation
still takes effect: when it commits through this process, within AUTH_CACHE_SECONDS from
another."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import api_keys
from app.models import ApiKey


class FakeClock:
    """The cache's monotonic clock, moved by hand: the expiry is tested, not slept through."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


Status = Callable[[], Awaitable[int]]


async def _verified_key(
    client: httpx.AsyncClient, session: AsyncSession, scopes: list[str]
) -> tuple[ApiKey, str, Status]:
    """A new key, used once (so verified and cached); how GET /lists answers it from now."""
    key, token = await api_keys.create_key(session, "app", scopes)
    await session.commit()

    async def lists() -> int:
        response = await client.get("/api/v1/lists", headers={"Authorization": f"Bearer {token}"})
        return response.status_code

    assert await lists() == 200
    return key, token, lists


async def test_a_key_revoked_elsewhere_is_refused_within_the_cache_time(
    client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(api_keys, "_clock", clock)
    key, _, lists = await _verified_key(client, session, ["lists:read"])
    # As another process would: a plain UPDATE, which this process hears nothing of.
    await session.execute(
        sa.update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=sa.func.now())
    )
    await session.commit()
    # Trusted from memory until the cache time is up (without the cache: a 401 at once) …
    clock.now += api_keys.AUTH_CACHE_SECONDS - 0.01
    assert await lists() == 200
    # … then refused.
    clock.now += 0.02
    assert await lists() == 401


async def test_a_lookup_between_a_revocations_flush_and_commit_is_not_cached(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    key, _, lists = await _verified_key(client, session, ["lists:read"])
    key.revoked_at = sa.func.now()
    await session.flush()  # the cache is forgotten here, but the row is not committed yet …
    # … so a request now still reads the key as live (from another transaction): right for
    # now, and it must not be remembered past the commit.
    assert await lists() == 200
    await session.commit()
    assert await lists() == 401


async def test_a_key_revoked_through_this_process_is_refused_at_once(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    key, _, lists = await _verified_key(client, session, ["lists:read"])
    key.revoked_at = sa.func.now()  # an ORM change, as the CLI and the console make
    await session.commit()
    assert await lists() == 401


async def test_a_cached_key_keeps_its_scopes(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, token, lists = await _verified_key(client, session, ["lists:read"])
    for _ in range(2):  # the second request is answered from the cache
        assert await lists() == 200
        denied = await client.post(
            "/api/v1/lists", json={"name": "x"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert denied.status_code == 403


async def test_requests_that_miss_together_share_one_lookup(
    client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(api_keys, "_clock", clock)
    _, _, lists = await _verified_key(client, session, ["lists:read"])
    clock.now += api_keys.AUTH_CACHE_SECONDS + 1  # expired: every request below misses
    lookups = 0

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        nonlocal lookups
        lookups += statement.lstrip().upper().startswith("SELECT") and "api_keys" in statement

    event.listen(Engine, "before_cursor_execute", count)
    try:
        assert await asyncio.gather(*(lists() for _ in range(8))) == [200] * 8
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert lookups == 1
