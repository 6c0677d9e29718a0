"""API keys: hashing, scopes, bootstrap."""

from __future__ import annotations

import hashlib
import re
import secrets

import httpx
import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import api_keys
from app.core.errors import Invalid
from app.core.settings import Settings
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


async def test_the_stored_prefix_is_a_public_id_not_part_of_the_secret(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    key, token = await api_keys.create_key(session, "app", ["lists:read"])
    await session.commit()
    assert re.fullmatch(r"wk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", token), token
    # The whole 32-byte secret follows what is stored: a database dump gives none of it.
    assert key.prefix == token[:11]
    assert token.startswith(key.prefix + "_")
    assert len(token.removeprefix(key.prefix + "_")) == 43
    assert key.token_hash == hashlib.sha256(token.encode()).hexdigest()
    response = await client.get("/api/v1/lists", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


async def test_bootstrap_keys_need_32_random_characters(session: AsyncSession) -> None:
    for weak in (
        "wk_" + "x1y2z3" * 5,  # 30 characters
        "0123456789abcdef",  # the old minimum of 16
        "wk_" + "changeme" * 5,  # long, but one word over and over
    ):
        with pytest.raises(ValidationError, match="bootstrap_api_key"):
            Settings(bootstrap_api_key=weak, _env_file=None)  # type: ignore[call-arg]
        with pytest.raises(Invalid):
            await api_keys.ensure_key(session, weak, "bootstrap")
    generated = "wk_" + secrets.token_urlsafe(24)  # exactly 32 characters after wk_
    assert Settings(bootstrap_api_key=generated, _env_file=None)  # type: ignore[call-arg]
    key = await api_keys.ensure_key(session, generated, "bootstrap")
    assert key.prefix == ""  # a chosen token has no public id, so nothing of it is stored
    assert await api_keys.authenticate(session, generated) is not None
