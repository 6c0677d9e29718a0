"""/api/v1/subscribers: CRUD, memberships, queries, hostile input."""

from __future__ import annotations

from typing import Any

import httpx


async def _list(client: httpx.AsyncClient, name: str, optin: str = "single") -> int:
    response = await client.post("/api/v1/lists", json={"name": name, "optin": optin})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def _subscriber(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/subscribers", json=fields)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_email_is_normalised_and_unique_case_insensitively(
    client: httpx.AsyncClient,
) -> None:
    created = await _subscriber(client, email="  Ada.Lovelace@Example.COM ", name="Ada")
    assert created["email"] == "ada.lovelace@example.com"
    duplicate = await client.post("/api/v1/subscribers", json={"email": "ADA.LOVELACE@example.com"})
    assert duplicate.status_code == 409
    kept = await client.get(f"/api/v1/subscribers/{created['id']}")
    assert kept.json()["name"] == "Ada"


async def test_memberships_follow_the_list_optin(client: httpx.AsyncClient) -> None:
    single = await _list(client, "single")
    double = await _list(client, "double", optin="double")
    created = await _subscriber(client, email="a@example.com", lists=[single, double])
    statuses = {m["list_id"]: m["status"] for m in created["lists"]}
    assert statuses == {single: "confirmed", double: "unconfirmed"}
    preconfirmed = await _subscriber(client, email="b@example.com", lists=[double], preconfirm=True)
    assert preconfirmed["lists"][0]["status"] == "confirmed"


async def test_patch_replaces_memberships_and_attributes(client: httpx.AsyncClient) -> None:
    one, two, three = [await _list(client, n) for n in ("one", "two", "three")]
    created = await _subscriber(
        client, email="c@example.com", lists=[one, two], attributes={"city": "Oslo"}
    )
    patched = await client.patch(
        f"/api/v1/subscribers/{created['id']}",
        json={"lists": [two, three], "attributes": {"plan": "pro"}, "name": "C"},
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert sorted(m["list_id"] for m in body["lists"]) == [two, three]
    assert body["attributes"] == {"plan": "pro"}
    assert body["name"] == "C"


async def test_single_membership_endpoints(client: httpx.AsyncClient) -> None:
    news = await _list(client, "news")
    created = await _subscriber(client, email="d@example.com")
    put = await client.put(
        f"/api/v1/subscribers/{created['id']}/lists/{news}", json={"status": "unsubscribed"}
    )
    assert put.status_code == 200
    assert put.json()["status"] == "unsubscribed"
    removed = await client.delete(f"/api/v1/subscribers/{created['id']}/lists/{news}")
    assert removed.status_code == 204
    again = await client.delete(f"/api/v1/subscribers/{created['id']}/lists/{news}")
    assert again.status_code == 404


async def test_unknown_list_is_422_and_nothing_is_stored(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/subscribers", json={"email": "e@example.com", "lists": [4242]}
    )
    assert response.status_code == 422
    assert "4242" in response.json()["detail"]
    assert (await client.get("/api/v1/subscribers")).json()["items"] == []


async def test_filters_by_list_status_email_and_attribute(client: httpx.AsyncClient) -> None:
    news = await _list(client, "news")
    await _subscriber(client, email="oslo@example.com", lists=[news], attributes={"city": "Oslo"})
    await _subscriber(client, email="rome@example.com", attributes={"city": "Rome"})
    await _subscriber(client, email="blocked@example.com", status="blocklisted")

    async def emails(**params: Any) -> list[str]:
        response = await client.get("/api/v1/subscribers", params=params)
        assert response.status_code == 200, response.text
        return [item["email"] for item in response.json()["items"]]

    assert await emails(list_id=news) == ["oslo@example.com"]
    assert await emails(status="blocklisted") == ["blocked@example.com"]
    assert await emails(email="ROME") == ["rome@example.com"]
    assert await emails(attribute="city=Rome") == ["rome@example.com"]
    assert await emails(email="%") == []
    bad = await client.get("/api/v1/subscribers", params={"attribute": "no-equals"})
    assert bad.status_code == 422


async def test_segment_query(client: httpx.AsyncClient) -> None:
    await _subscriber(client, email="young@example.com", attributes={"age": 20})
    await _subscriber(client, email="old@example.com", attributes={"age": 70})
    response = await client.post(
        "/api/v1/subscribers/query",
        json={"segment": {"attribute": "age", "op": "gt", "value": 30}},
    )
    assert response.status_code == 200, response.text
    assert [item["email"] for item in response.json()["items"]] == ["old@example.com"]
    invalid = await client.post(
        "/api/v1/subscribers/query", json={"segment": {"field": "email", "op": "like"}}
    )
    assert invalid.status_code == 422


async def test_hostile_input_is_refused(client: httpx.AsyncClient) -> None:
    cases: list[dict[str, Any]] = [
        {"email": "not-an-address"},
        {"email": "a@example.com\r\nBcc: x@example.com"},
        {"email": "a@example.com", "name": "Ann\r\nBcc: x@example.com"},
        {"email": "a@example.com", "name": "nul\x00"},
        {"email": "a@example.com", "attributes": {"bad key": 1}},
        {"email": "a@example.com", "attributes": {"k": "nul\x00"}},
        {
            "email": "a@example.com",
            "attributes": {"k": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}},
        },
        {"email": "a@example.com", "status": "deleted"},
        {"email": "a@example.com", "attributes": []},
    ]
    for body in cases:
        response = await client.post("/api/v1/subscribers", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/api/v1/subscribers")).json()["items"] == []


async def test_delete(client: httpx.AsyncClient) -> None:
    created = await _subscriber(client, email="f@example.com")
    assert (await client.delete(f"/api/v1/subscribers/{created['id']}")).status_code == 204
    assert (await client.get(f"/api/v1/subscribers/{created['id']}")).status_code == 404
