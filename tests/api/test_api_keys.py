"""/api/v1/api-keys: an `admin` key lists, creates and revokes keys; others are refused."""

from __future__ import annotations

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import api_keys
from app.models import ApiKey, AuditEntry
from tests.helpers.api import ADMIN_TOKEN


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_create_list_revoke(client: httpx.AsyncClient) -> None:
    made = await client.post("/api/v1/api-keys", json={"name": "ci", "scopes": ["lists:read"]})
    assert made.status_code == 201, made.text
    body = made.json()
    token = body["token"]
    assert token.startswith(body["prefix"] + "_") and body["revoked_at"] is None
    assert (await client.get("/api/v1/lists", headers=_bearer(token))).status_code == 200

    listed = (await client.get("/api/v1/api-keys")).json()
    assert [item["name"] for item in listed["items"]] == ["bootstrap", "ci"]
    assert all("token" not in item and "token_hash" not in item for item in listed["items"])
    one = await client.get(f"/api/v1/api-keys/{body['id']}")
    assert one.status_code == 200 and "token" not in one.json()

    assert (await client.delete(f"/api/v1/api-keys/{body['id']}")).status_code == 204
    assert (await client.get("/api/v1/lists", headers=_bearer(token))).status_code == 401
    again = await client.get(f"/api/v1/api-keys/{body['id']}")
    assert again.json()["revoked_at"] is not None
    assert (await client.delete(f"/api/v1/api-keys/{body['id']}")).status_code == 204


async def test_creating_and_revoking_a_key_is_audited(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    made = (
        await client.post("/api/v1/api-keys", json={"name": "ci", "scopes": ["lists:read"]})
    ).json()
    assert (await client.delete(f"/api/v1/api-keys/{made['id']}")).status_code == 204
    entries = (
        await session.execute(
            sa.select(
                AuditEntry.actor_email, AuditEntry.action, AuditEntry.target, AuditEntry.details
            )
            .where(AuditEntry.action.startswith("api_key."))
            .order_by(AuditEntry.id)
        )
    ).all()
    bootstrap = await session.scalar(sa.select(ApiKey.id).where(ApiKey.name == "bootstrap"))
    target = f"api_key:{made['id']}"
    assert [entry[:3] for entry in entries] == [
        (f"api key {bootstrap} (bootstrap)", "api_key.create", target),
        (f"api key {bootstrap} (bootstrap)", "api_key.revoke", target),
    ]
    assert entries[0][3] == {"name": "ci", "prefix": made["prefix"], "scopes": ["lists:read"]}


async def test_keys_without_admin_may_not_manage_keys(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    async with session.begin():
        _, writer = await api_keys.create_key(session, "writer", ["lists:write", "queue:write"])
    for response in (
        await client.get("/api/v1/api-keys", headers=_bearer(writer)),
        await client.post(
            "/api/v1/api-keys", json={"name": "x", "scopes": ["admin"]}, headers=_bearer(writer)
        ),
        await client.delete("/api/v1/api-keys/1", headers=_bearer(writer)),
    ):
        assert response.status_code == 403
    assert (await client.get("/api/v1/lists", headers=_bearer(ADMIN_TOKEN))).status_code == 200


async def test_invalid_keys_are_refused(client: httpx.AsyncClient) -> None:
    for body in (
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["lists:delete"]},
        {"name": "", "scopes": ["admin"]},
        {"name": "x", "scopes": ["admin"], "token": "wk_chosen"},
    ):
        assert (await client.post("/api/v1/api-keys", json=body)).status_code in (400, 422), body
    assert (await client.delete("/api/v1/api-keys/999999")).status_code == 404
