"""API keys: hashing, scopes, bootstrap."""

from __future__ import annotations

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import api_keys
from app.models import ApiKey
from tests.helpers.api import ADMIN_TOKEN


async def test_only_a_hash_is_stored(client: httpx.AsyncClient, session: AsyncSession) -> None:
    stored = (await session.scalars(sa.select(ApiKey))).all()
    assert len(stored) == 1
    assert stored[0].token_hash == api_keys.hash_token(ADMIN_TOKEN)
    assert ADMIN_TOKEN not in repr(stored[0].__dict__.values())


async def test_scopes_limit_what_a_key_can_do(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, token = await api_keys.create_key(session, "reader", ["lists:read"])
    await session.commit()
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/lists", headers=headers)).status_code == 200
    denied = await client.post("/api/v1/lists", json={"name": "x"}, headers=headers)
    assert denied.status_code == 403
    assert "lists:write" in denied.json()["detail"]
    assert (await client.get("/api/v1/subscribers", headers=headers)).status_code == 403


async def test_write_implies_read_and_admin_implies_all() -> None:
    assert api_keys.allows(["lists:write"], "lists:read")
    assert not api_keys.allows(["lists:read"], "lists:write")
    assert api_keys.allows(["admin"], "campaigns:write")
    assert not api_keys.allows(["templates:write"], "lists:read")


async def test_revoked_key_is_refused(client: httpx.AsyncClient, session: AsyncSession) -> None:
    key, token = await api_keys.create_key(session, "temp", ["admin"])
    key.revoked_at = sa.func.now()
    await session.commit()
    response = await client.get("/api/v1/lists", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
