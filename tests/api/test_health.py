"""/healthz and the OpenAPI document."""

from __future__ import annotations

import httpx


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
