"""/api/v1/suppressions"""

from __future__ import annotations

import httpx


async def test_add_get_list_remove(client: httpx.AsyncClient) -> None:
    added = await client.post(
        "/api/v1/suppressions",
        json={"address": "Bounced@Example.com", "reason": "hard bounce", "scope": "broadcast"},
    )
    assert added.status_code == 201, added.text
    assert added.json()["address"] == "bounced@example.com"
    assert added.json()["source"] == "api"
    again = await client.post("/api/v1/suppressions", json={"address": "bounced@example.com"})
    assert again.status_code == 409

    fetched = await client.get("/api/v1/suppressions/BOUNCED@example.com")
    assert fetched.json()["scope"] == "broadcast"
    listed = await client.get("/api/v1/suppressions", params={"scope": "broadcast"})
    assert [item["address"] for item in listed.json()["items"]] == ["bounced@example.com"]

    assert (await client.delete("/api/v1/suppressions/bounced@example.com")).status_code == 204
    assert (await client.get("/api/v1/suppressions/bounced@example.com")).status_code == 404


async def test_bad_addresses_and_reasons(client: httpx.AsyncClient) -> None:
    for body in (
        {"address": "nope"},
        {"address": "a@example.com", "reason": "x\r\nBcc: y"},
        {"address": "a@example.com", "scope": "everything"},
    ):
        assert (await client.post("/api/v1/suppressions", json=body)).status_code == 422
    assert (await client.get("/api/v1/suppressions/not-an-address")).status_code == 422
