"""/api/v1/lists against a real database."""

from __future__ import annotations

import httpx

from tests.helpers.api import ADMIN_TOKEN

PROBLEM = "application/problem+json"


async def test_create_read_update_delete(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/api/v1/lists", json={"name": "Weekly", "optin": "double", "visibility": "public"}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "Weekly"
    assert body["optin"] == "double"
    assert body["subscriber_counts"] == {}

    fetched = await client.get(f"/api/v1/lists/{body['id']}")
    assert fetched.json()["visibility"] == "public"

    patched = await client.patch(f"/api/v1/lists/{body['id']}", json={"description": "Fridays"})
    assert patched.status_code == 200
    assert patched.json()["description"] == "Fridays"
    assert patched.json()["name"] == "Weekly"

    deleted = await client.delete(f"/api/v1/lists/{body['id']}")
    assert deleted.status_code == 204
    gone = await client.get(f"/api/v1/lists/{body['id']}")
    assert gone.status_code == 404
    assert gone.headers["content-type"] == PROBLEM
    assert gone.json()["detail"] == f"list {body['id']} does not exist"


async def test_duplicate_name_is_conflict_and_keeps_the_original(
    client: httpx.AsyncClient,
) -> None:
    first = await client.post("/api/v1/lists", json={"name": "News", "description": "one"})
    second = await client.post("/api/v1/lists", json={"name": "News", "description": "two"})
    assert second.status_code == 409
    assert "already exists" in second.json()["detail"]
    kept = await client.get(f"/api/v1/lists/{first.json()['id']}")
    assert kept.json()["description"] == "one"


async def test_cursor_pagination_walks_every_list_once(client: httpx.AsyncClient) -> None:
    for index in range(7):
        assert (await client.post("/api/v1/lists", json={"name": f"L{index}"})).status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/lists", params=params)).json()
        seen += [item["name"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"L{index}" for index in range(7)]


async def test_bad_cursor_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/lists", params={"cursor": "bm9wZQ"})
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/lists", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["title"] == "Malformed JSON"


async def test_unknown_fields_and_wrong_types_are_422(client: httpx.AsyncClient) -> None:
    unknown = await client.post("/api/v1/lists", json={"name": "A", "colour": "red"})
    assert unknown.status_code == 422
    assert "colour" in unknown.json()["detail"]
    wrong = await client.post("/api/v1/lists", json={"name": "A", "optin": "triple"})
    assert wrong.status_code == 422


async def test_line_breaks_and_nul_in_names_are_refused(client: httpx.AsyncClient) -> None:
    for name in ("Evil\r\nBcc: victim@example.com", "nul\x00byte"):
        response = await client.post("/api/v1/lists", json={"name": name})
        assert response.status_code == 422, name
    listing = await client.get("/api/v1/lists")
    assert listing.json()["items"] == []


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/lists", json={"name": "big", "description": "x" * 1_100_000}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM


async def test_unknown_id_is_404_on_every_verb(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/lists/999")).status_code == 404
    assert (await client.patch("/api/v1/lists/999", json={"name": "x"})).status_code == 404
    assert (await client.delete("/api/v1/lists/999")).status_code == 404


async def test_authentication_is_required(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/api/v1/lists", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    wrong = await client.get("/api/v1/lists", headers={"Authorization": "Bearer nope-nope"})
    assert wrong.status_code == 401
    right = await client.get("/api/v1/lists", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert right.status_code == 200


async def test_chunked_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(12):
            yield b"x" * 100_000

    response = await client.post(
        "/api/v1/lists", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["title"] == "Content too large"


async def test_nul_in_the_url_is_400(client: httpx.AsyncClient) -> None:
    for url in ("/api/v1/subscribers?email=a%00b", "/api/v1/suppressions?address=x%00"):
        response = await client.get(url)
        assert response.status_code == 400, url
        assert response.headers["content-type"] == "application/problem+json"
