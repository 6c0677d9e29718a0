"""/healthz and the OpenAPI document."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import api_keys
from app.core.errors import Invalid


async def test_healthz_touches_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


async def test_openapi_lists_the_contract_paths(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    for path in (
        "/api/v1/lists",
        "/api/v1/lists/{list_id}",
        "/api/v1/subscribers",
        "/api/v1/templates",
        "/api/v1/campaigns",
        "/api/v1/suppressions",
        "/healthz",
    ):
        assert path in schema["paths"], path


async def test_metrics_need_a_key_with_metrics_read(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    anonymous = await client.get("/metrics", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert "warta_" not in anonymous.text
    _, lists_only = await api_keys.create_key(session, "lists", ["lists:write"])
    _, scraper = await api_keys.create_key(session, "prometheus", ["metrics:read"])
    await session.commit()
    denied = await client.get("/metrics", headers={"Authorization": f"Bearer {lists_only}"})
    assert denied.status_code == 403
    assert "metrics:read" in denied.json()["detail"]
    scraped = await client.get("/metrics", headers={"Authorization": f"Bearer {scraper}"})
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "warta_subscribers 0" in scraped.text
    # The scraper's key reads the figures and nothing else.
    other = await client.get("/api/v1/subscribers", headers={"Authorization": f"Bearer {scraper}"})
    assert other.status_code == 403
    assert (await client.get("/metrics")).status_code == 200  # admin keys have every scope
    assert api_keys.check_scopes(["metrics:read"]) == ["metrics:read"]
    with pytest.raises(Invalid):
        api_keys.check_scopes(["metrics:write"])
