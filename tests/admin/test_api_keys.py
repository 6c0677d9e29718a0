"""The API keys page: admins and owners create keys (the token shown once) and revoke them;
every other role is refused by the server, and a revoked key stops working on the API."""

from __future__ import annotations

import re

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import api_keys
from app.models import AdminRole, ApiKey, AuditEntry
from tests.helpers.admin import sign_in

TOKEN = re.compile(r'<code class="secret">(wk_[^<]+)</code>')


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _key_named(session: AsyncSession, name: str) -> ApiKey | None:
    session.expire_all()
    return await session.scalar(sa.select(ApiKey).where(ApiKey.name == name))


async def _create(console: httpx.AsyncClient, csrf: str, name: str, *scopes: str) -> str:
    response = await console.post(
        "/admin/api-keys", data={"csrf": csrf, "name": name, "scopes": list(scopes)}
    )
    assert response.status_code == 200, response.text
    found = TOKEN.search(response.text)
    assert found, response.text
    return found.group(1)


@pytest.mark.parametrize("role", [AdminRole.admin, AdminRole.owner])
async def test_a_new_key_is_shown_once_works_and_is_audited(
    console: httpx.AsyncClient, session: AsyncSession, role: AdminRole
) -> None:
    csrf = await sign_in(console, role)
    token = await _create(console, csrf, "CRM sync", "lists:read", "subscribers:write")

    key = await _key_named(session, "CRM sync")
    assert key is not None and key.scopes == ["lists:read", "subscribers:write"]
    assert key.token_hash == api_keys.hash_token(token) and token not in key.token_hash
    listing = await console.get("/admin/api-keys")
    assert listing.status_code == 200
    assert key.prefix in listing.text and token not in listing.text
    assert "subscribers:write" in listing.text

    assert (await console.get("/api/v1/lists", headers=_bearer(token))).status_code == 200
    refused = await console.post("/api/v1/lists", json={"name": "x"}, headers=_bearer(token))
    assert refused.status_code == 403  # only the chosen scopes
    entry = await session.scalar(sa.select(AuditEntry).where(AuditEntry.action == "api_key.create"))
    assert entry is not None and entry.target == f"api_key:{key.id}"
    assert entry.details["scopes"] == ["lists:read", "subscribers:write"]
    assert token not in str(entry.details)


async def test_a_revoked_key_no_longer_authenticates(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    csrf = await sign_in(console, AdminRole.admin)
    token = await _create(console, csrf, "old job", "lists:read")
    key = await _key_named(session, "old job")
    assert key is not None
    assert (await console.get("/api/v1/lists", headers=_bearer(token))).status_code == 200

    confirm = await console.get(f"/admin/api-keys/{key.id}/revoke")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.text
    revoked = await console.post(f"/admin/api-keys/{key.id}/revoke", data={"csrf": csrf})
    assert revoked.status_code == 303

    assert (await console.get("/api/v1/lists", headers=_bearer(token))).status_code == 401
    key = await _key_named(session, "old job")
    assert key is not None and key.revoked_at is not None
    assert "revoked" in (await console.get("/admin/api-keys")).text
    entry = await session.scalar(sa.select(AuditEntry).where(AuditEntry.action == "api_key.revoke"))
    assert entry is not None and entry.details == {"name": "old job", "prefix": key.prefix}


@pytest.mark.parametrize("role", [AdminRole.viewer, AdminRole.marketer])
async def test_other_roles_are_refused_by_the_server(
    console: httpx.AsyncClient, session: AsyncSession, role: AdminRole
) -> None:
    async with session.begin():
        victim, token = await api_keys.create_key(session, "victim", ["lists:read"])
    csrf = await sign_in(console, role)
    home = await console.get("/admin/account")
    assert "/admin/api-keys" not in home.text  # not in the menu

    assert (await console.get("/admin/api-keys")).status_code == 403
    made = await console.post(
        "/admin/api-keys", data={"csrf": csrf, "name": "mine", "scopes": ["admin"]}
    )
    assert made.status_code == 403 and "wk_" not in made.text
    assert (await console.get(f"/admin/api-keys/{victim.id}/revoke")).status_code == 403
    revoke = await console.post(f"/admin/api-keys/{victim.id}/revoke", data={"csrf": csrf})
    assert revoke.status_code == 403

    assert await _key_named(session, "mine") is None
    still = await _key_named(session, "victim")
    assert still is not None and still.revoked_at is None
    assert (await console.get("/api/v1/lists", headers=_bearer(token))).status_code == 200


async def test_forms_without_the_csrf_token_are_refused(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    async with session.begin():
        victim, _ = await api_keys.create_key(session, "victim", ["lists:read"])
    await sign_in(console, AdminRole.owner)
    made = await console.post("/admin/api-keys", data={"name": "forged", "scopes": ["admin"]})
    assert made.status_code == 403
    revoke = await console.post(f"/admin/api-keys/{victim.id}/revoke", data={"csrf": "x" * 64})
    assert revoke.status_code == 403
    assert await _key_named(session, "forged") is None
    still = await _key_named(session, "victim")
    assert still is not None and still.revoked_at is None


@pytest.mark.parametrize(
    ("name", "scopes", "says"),
    [
        ("no scopes", [], "at least one scope"),
        ("bad scope", ["lists:delete"], "unknown scopes"),
        ("  ", ["lists:read"], "needs a name"),
    ],
)
async def test_a_wrong_form_is_shown_again_with_the_reason(
    console: httpx.AsyncClient, session: AsyncSession, name: str, scopes: list[str], says: str
) -> None:
    csrf = await sign_in(console, AdminRole.admin)
    response = await console.post(
        "/admin/api-keys", data={"csrf": csrf, "name": name, "scopes": scopes}
    )
    assert response.status_code == 422 and says in response.text
    assert TOKEN.search(response.text) is None
    assert await session.scalar(sa.select(sa.func.count()).select_from(ApiKey)) == 1  # bootstrap


async def test_revoking_an_unknown_key_is_404(console: httpx.AsyncClient) -> None:
    csrf = await sign_in(console, AdminRole.admin)
    assert (await console.get("/admin/api-keys/999999/revoke")).status_code == 404
    response = await console.post("/admin/api-keys/999999/revoke", data={"csrf": csrf})
    assert response.status_code == 404
