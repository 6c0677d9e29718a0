"""/api/v1/campaigns and /api/v1/templates: drafts, validation, conflicts."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Campaign, CampaignStatus


async def _list(client: httpx.AsyncClient, name: str = "news") -> int:
    return int((await client.post("/api/v1/lists", json={"name": name})).json()["id"])


def _campaign(list_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "November",
        "subject": "Hello {{ subscriber.name }}",
        "from_email": "Warta News <News@Example.com>",
        "list_ids": [list_id],
        "html": "<p>Hi {{ subscriber.name }}</p>",
        **extra,
    }


async def test_draft_lifecycle(client: httpx.AsyncClient) -> None:
    list_id = await _list(client)
    created = await client.post("/api/v1/campaigns", json=_campaign(list_id))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "draft"
    assert body["from_email"] == "Warta News <news@example.com>"
    assert body["list_ids"] == [list_id]

    other = await _list(client, "other")
    patched = await client.patch(
        f"/api/v1/campaigns/{body['id']}", json={"list_ids": [list_id, other], "name": "Dec"}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["list_ids"] == [list_id, other]
    assert patched.json()["subject"] == "Hello {{ subscriber.name }}"

    assert (await client.delete(f"/api/v1/campaigns/{body['id']}")).status_code == 204


async def test_only_drafts_can_be_edited(client: httpx.AsyncClient, session: AsyncSession) -> None:
    list_id = await _list(client)
    created = (await client.post("/api/v1/campaigns", json=_campaign(list_id))).json()
    campaign = await session.get(Campaign, created["id"])
    assert campaign is not None
    campaign.status = CampaignStatus.running
    await session.commit()
    patched = await client.patch(f"/api/v1/campaigns/{created['id']}", json={"name": "x"})
    assert patched.status_code == 409
    assert "only drafts" in patched.json()["detail"]
    deleted = await client.delete(f"/api/v1/campaigns/{created['id']}")
    assert deleted.status_code == 409
    assert (await client.get(f"/api/v1/campaigns/{created['id']}")).json()["name"] == "November"


async def test_invalid_campaigns_are_422(client: httpx.AsyncClient) -> None:
    list_id = await _list(client)
    cases = [
        _campaign(999),
        _campaign(list_id, html="", text=""),
        _campaign(list_id, html="{% if %}"),
        _campaign(list_id, subject="Hi\r\nBcc: victim@example.com"),
        _campaign(list_id, from_email="news@example.com\r\nBcc: x@example.com"),
        _campaign(list_id, from_email="not an address"),
        _campaign(list_id, template_id=12345),
        _campaign(list_id, segment={"field": "nope", "op": "eq", "value": 1}),
        {**_campaign(list_id), "list_ids": []},
    ]
    for body in cases:
        response = await client.post("/api/v1/campaigns", json=body)
        assert response.status_code == 422, (body, response.text)
    assert (await client.get("/api/v1/campaigns")).json()["items"] == []


async def test_template_syntax_is_checked_and_in_use_templates_are_kept(
    client: httpx.AsyncClient,
) -> None:
    broken = await client.post(
        "/api/v1/templates", json={"name": "t", "html": "<p>{{ subscriber.name </p>"}
    )
    assert broken.status_code == 422
    assert "html: line 1" in broken.json()["detail"]
    template = await client.post(
        "/api/v1/templates", json={"name": "t", "subject": "S", "html": "<p>{{ 1 }}</p>"}
    )
    assert template.status_code == 201
    template_id = template.json()["id"]
    list_id = await _list(client)
    campaign = await client.post(
        "/api/v1/campaigns", json=_campaign(list_id, html="", template_id=template_id)
    )
    assert campaign.status_code == 201, campaign.text
    in_use = await client.delete(f"/api/v1/templates/{template_id}")
    assert in_use.status_code == 409
    assert (await client.get(f"/api/v1/templates/{template_id}")).status_code == 200


async def test_per_campaign_rate_is_stored_and_validated(client: httpx.AsyncClient) -> None:
    list_id = await _list(client)
    created = await client.post("/api/v1/campaigns", json=_campaign(list_id, rate=25))
    assert created.status_code == 201, created.text
    assert created.json()["rate"] == 25
    assert created.json()["audience_size"] == 0
    for bad in (0, -1, 10**9):
        response = await client.post("/api/v1/campaigns", json=_campaign(list_id, rate=bad))
        assert response.status_code == 422
