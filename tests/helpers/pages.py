"""Helpers for the public-page tests: seeded lists and subscribers, tokens, form fields."""

from __future__ import annotations

import re
from typing import Any

import httpx

from app.core.settings import Settings
from app.mail import identity
from tests.helpers.api import create_campaign, post_json

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def make_list(api: httpx.AsyncClient, name: str, **fields: Any) -> int:
    """A list (public by default); its id."""
    body = {"name": name, "visibility": "public", **fields}
    return int((await post_json(api, "/api/v1/lists", body))["id"])


async def make_subscriber(api: httpx.AsyncClient, email: str, *lists: int, **fields: Any) -> int:
    """A confirmed subscriber on `lists`; its id."""
    body = {"email": email, "lists": list(lists), "preconfirm": True, **fields}
    return int((await post_json(api, "/api/v1/subscribers", body))["id"])


async def memberships(api: httpx.AsyncClient, subscriber_id: int) -> dict[int, str]:
    """list id -> status of a subscriber's memberships."""
    response = await api.get(f"/api/v1/subscribers/{subscriber_id}")
    assert response.status_code == 200, response.text
    return {item["list_id"]: item["status"] for item in response.json()["lists"]}


def token(settings: Settings, purpose: str, *parts: int) -> str:
    """A genuine link token, as the composer makes them."""
    return identity.link_token(settings.effective_secret_key(), purpose, *parts)


def csrf(html: str, index: int = 0) -> str:
    """The form token of the n-th form on a page."""
    found = CSRF.findall(html)
    assert len(found) > index, html
    return found[index]


async def campaign_for(api: httpx.AsyncClient, *list_ids: int, **fields: Any) -> int:
    """A draft campaign to the lists."""
    return await create_campaign(api, *list_ids, **fields)
