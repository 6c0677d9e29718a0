"""The authentication cache: a verified key skips the query for a moment, and a revocation
still takes effect: at once through this process, within AUTH_CACHE_SECONDS from another."""

from __future__ import annotations

import time

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import api_keys
from app.models import ApiKey
from tests.helpers.api import eventually


async def test_a_key_revoked_elsewhere_is_refused_within_the_cache_time(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    key, token = await api_keys.create_key(session, "app", ["lists:read"])
    await session.commit()
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/lists", headers=headers)).status_code == 200
    # As another process would: a plain UPDATE, which this process hears nothing of.
    await session.execute(
        sa.update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=sa.func.now())
    )
    await session.commit()
    revoked_at = time.monotonic()
    # Trusted from memory for a moment (without the cache this is a 401 at once) …
    assert (await client.get("/api/v1/lists", headers=headers)).status_code == 200

    async def refused() -> bool:
        return (await client.get("/api/v1/lists", headers=headers)).status_code == 401

    # … then refused, within the cache time (plus the slack of a loaded machine).
    await eventually(refused, api_keys.AUTH_CACHE_SECONDS + 5, "the revoked key refused")
    assert time.monotonic() - revoked_at >= api_keys.AUTH_CACHE_SECONDS * 0.9


async def test_a_key_revoked_through_this_process_is_refused_at_once(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    key, token = await api_keys.create_key(session, "app", ["lists:read"])
    await session.commit()
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/lists", headers=headers)).status_code == 200
    key.revoked_at = sa.func.now()  # an ORM change, as the CLI and the console make
    await session.commit()
    assert (await client.get("/api/v1/lists", headers=headers)).status_code == 401


async def test_a_cached_key_keeps_its_scopes(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, token = await api_keys.create_key(session, "reader", ["lists:read"])
    await session.commit()
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(2):  # the second request is answered from the cache
        assert (await client.get("/api/v1/lists", headers=headers)).status_code == 200
        denied = await client.post("/api/v1/lists", json={"name": "x"}, headers=headers)
        assert denied.status_code == 403
