"""Small helpers shared by the API-driven tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

ADMIN_TOKEN = "wk_test_admin_token_0123456789abcdefghijklmnop"
"""The bootstrap admin key every test app is created with."""


async def post_json(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST and insist on 200/201; the response body."""
    response = await api.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


async def create_campaign(api: httpx.AsyncClient, *list_ids: int, **fields: Any) -> int:
    """A draft campaign to the lists (fields override the defaults; text if no body); its id."""
    body = {
        "name": "c",
        "subject": "Hello",
        "from_email": "news@example.com",
        "list_ids": list(list_ids),
        **fields,
    }
    if "html" not in body and "text" not in body:
        body["text"] = "Hi {{ subscriber.name }}"
    return int((await post_json(api, "/api/v1/campaigns", body))["id"])


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 30, what: str = "condition"
) -> None:
    """Poll `check` every 20 ms until it holds; fail after `within` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"{what} not reached within {within} s"
        await asyncio.sleep(0.02)


async def wait_for_status(
    api: httpx.AsyncClient, campaign_id: int, status: str, within: float = 60
) -> dict[str, Any]:
    """Poll the stats endpoint until the campaign reaches `status` (bounded by `within`)."""
    stats: dict[str, Any] = {}

    async def reached() -> bool:
        stats.update((await api.get(f"/api/v1/campaigns/{campaign_id}/stats")).json())
        return bool(stats["status"] == status)

    await eventually(reached, within, f"campaign status {status}")
    return stats
