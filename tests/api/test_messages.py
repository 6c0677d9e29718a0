"""POST /messages without a worker: validation, storage, suppression, idempotency, batch, reads."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.address_hash import hashed_address
from app.core.settings import Settings
from app.mail import identity
from app.mail.identity import Kind
from app.models import Event, IdempotencyKey, Message, Suppression, utcnow
from tests.helpers.api import post_json

MESSAGE = {
    "from": "Shop <shop@example.com>",
    "to": "alice@example.com",
    "subject": "Receipt {{ order }}",
    "html": "<p>Thanks, {{ to.name or 'friend' }}, for order {{ order }}</p>",
    "data": {"order": 42},
    "tags": ["receipt"],
    "metadata": {"customer": 7},
}


async def _send(client: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await client.post("/api/v1/messages", json=body, headers=headers)


async def test_a_message_is_stored_built_and_queued(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    response = await _send(
        client, {**MESSAGE, "to": ["alice@example.com", "Bob <bob@example.com>"]}
    )
    assert response.status_code == 202, response.text
    messages = response.json()["messages"]
    assert [m["to"] for m in messages] == ["alice@example.com", "bob@example.com"]
    assert {m["status"] for m in messages} == {"queued"}
    async with sessionmaker() as session:
        row = await session.get(Message, messages[1]["id"])
        assert row is not None
        parsed = email.message_from_bytes(row.mime, policy=email.policy.default)
    assert parsed["Subject"] == "Receipt 42"
    assert parsed["To"] == "Bob <bob@example.com>"
    assert parsed["Message-ID"] == identity.message_id(
        settings.secret_key, row.id, settings.mta_hostname, Kind.MESSAGE
    )
    assert parsed["List-Unsubscribe"] is None  # transactional stream
    body = parsed.get_body(("html",))
    assert body is not None and "Thanks, Bob, for order 42" in body.get_content()
    shown = (await client.get(f"/api/v1/messages/{row.id}")).json()
    assert shown["status"] == "queued"
    assert shown["tags"] == ["receipt"] and shown["metadata"] == {"customer": 7}
    assert [e["kind"] for e in shown["events"]] == ["queued"]


async def test_broadcast_stream_carries_one_click_unsubscribe(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await _send(client, {**MESSAGE, "stream": "broadcast"})
    message_id = response.json()["messages"][0]["id"]
    async with sessionmaker() as session:
        row = await session.get(Message, message_id)
        assert row is not None
        parsed = email.message_from_bytes(row.mime, policy=email.policy.default)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = str(parsed["List-Unsubscribe"]).strip("<>")
    path = httpx.URL(url).path
    page = await client.get(path)
    assert page.status_code == 200
    # The token is in the URL: no referrer leaks it, no framing clicks the button.
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-frame-options"] == "DENY"
    assert (await client.post(path, data={"List-Unsubscribe": "One-Click"})).status_code == 200
    shown = (await client.get("/api/v1/suppressions/alice@example.com")).json()
    assert shown["scope"] == "broadcast"
    again = await _send(client, {**MESSAGE, "stream": "broadcast"})
    assert again.json()["messages"][0]["status"] == "suppressed"
    transactional = await _send(client, MESSAGE)
    assert transactional.json()["messages"][0]["status"] == "queued"
    assert (await client.post(path + "x", data={})).status_code == 400


async def test_an_erased_address_known_only_by_its_hash_gets_no_mail(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    # An erasure keeps only `sha256:…` (scope all): the API must still refuse to mail it.
    async with sessionmaker() as session:
        session.add(
            Suppression(address=hashed_address("erin@example.com"), source="erasure", scope="all")
        )
        await session.commit()
    response = await _send(client, {**MESSAGE, "to": ["erin@example.com", "frank@example.com"]})
    assert [m["status"] for m in response.json()["messages"]] == ["suppressed", "queued"]


async def test_suppressed_recipient_gets_status_suppressed_and_no_mime(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await post_json(
        client, "/api/v1/suppressions", {"address": "bob@example.com", "scope": "transactional"}
    )
    await post_json(client, "/api/v1/suppressions", {"address": "carol@example.com"})
    await post_json(
        client, "/api/v1/suppressions", {"address": "dave@example.com", "scope": "broadcast"}
    )
    response = await _send(
        client,
        {**MESSAGE, "to": ["bob@example.com", "carol@example.com", "dave@example.com"]},
    )
    statuses = [m["status"] for m in response.json()["messages"]]
    assert statuses == ["suppressed", "suppressed", "queued"]
    async with sessionmaker() as session:
        kinds = (await session.scalars(sa.select(Event.kind).order_by(Event.id))).all()
        assert list(kinds) == ["suppressed", "suppressed", "queued"]
        rows = (await session.scalars(sa.select(Message).order_by(Message.id))).all()
        assert [len(r.mime) > 0 for r in rows] == [False, False, True]


async def test_template_with_data_and_attachments(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    template = await post_json(
        client,
        "/api/v1/templates",
        {"name": "reset", "subject": "Reset for {{ user }}", "html": "", "text": "Code {{ code }}"},
    )
    pdf = b"%PDF-1.4 fake" * 100
    response = await _send(
        client,
        {
            "from": "auth@example.com",
            "to": "alice@example.com",
            "template_id": template["id"],
            "data": {"user": "Alice", "code": "123456"},
            "headers": {"X-Request-Id": "abc"},
            "attachments": [
                {
                    "filename": "invoice.pdf",
                    "content_type": "application/pdf",
                    "content": base64.b64encode(pdf).decode(),
                }
            ],
        },
    )
    assert response.status_code == 202, response.text
    async with sessionmaker() as session:
        row = await session.get(Message, response.json()["messages"][0]["id"])
        assert row is not None
        parsed = email.message_from_bytes(row.mime, policy=email.policy.default)
    assert parsed["Subject"] == "Reset for Alice"
    assert parsed["X-Request-Id"] == "abc"
    files = list(parsed.iter_attachments())
    assert [f.get_filename() for f in files] == ["invoice.pdf"]
    assert files[0].get_content() == pdf
    text = parsed.get_body(("plain",))
    assert text is not None and "Code 123456" in text.get_content()


async def test_bad_input_is_a_problem_and_stores_nothing(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    cases: list[tuple[dict[str, Any], int]] = [
        ({**MESSAGE, "headers": {"Subject": "override"}}, 422),
        ({**MESSAGE, "headers": {"X-Evil": "a\r\nBcc: victim@example.com"}}, 422),
        ({**MESSAGE, "headers": {"Bad Name": "x"}}, 422),
        ({**MESSAGE, "headers": {"X-Warta-Stream": "x"}}, 422),
        ({**MESSAGE, "to": "not-an-address"}, 422),
        ({**MESSAGE, "to": []}, 422),
        ({**MESSAGE, "to": [f"u{i}@example.com" for i in range(51)]}, 422),
        ({**MESSAGE, "subject": "{{ missing }}"}, 422),
        ({**MESSAGE, "html": "{% if %}"}, 422),
        ({**MESSAGE, "html": "{{ ().__class__ }}"}, 422),
        ({**MESSAGE, "html": "{{ 'x' * 10**7 }}"}, 422),
        ({**MESSAGE, "template_id": 999}, 422),
        ({**MESSAGE, "stream": "bulk"}, 422),
        ({**MESSAGE, "tags": ["has space"]}, 422),
        ({**MESSAGE, "unknown": 1}, 422),
        ({k: v for k, v in MESSAGE.items() if k != "subject"}, 422),
        ({**MESSAGE, "attachments": [{"filename": "a", "content": "!!notbase64"}]}, 422),
        ({**MESSAGE, "attachments": [{"filename": "../a", "content": ""}]}, 422),
        ({**MESSAGE, "from": "Shop <shop@example.com>\r\nBcc: x@example.com"}, 422),
        ({**MESSAGE, "data": {"bad key": 1}}, 422),
    ]
    for body, status in cases:
        response = await _send(client, body)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    malformed = await client.post(
        "/api/v1/messages", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    async with sessionmaker() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Message)) == 0


async def test_oversized_attachments_are_413(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    content = base64.b64encode(b"x" * (settings.message_max_attachment_bytes + 1)).decode()
    body = {**MESSAGE, "attachments": [{"filename": "big.bin", "content": content}]}
    response = await _send(client, body)
    assert response.status_code == 413, response.text
    async with sessionmaker() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Message)) == 0


async def test_same_key_same_body_replays_different_body_is_422(client: httpx.AsyncClient) -> None:
    first = await _send(client, MESSAGE, **{"Idempotency-Key": "order-42"})
    assert first.status_code == 202
    again = await _send(client, MESSAGE, **{"Idempotency-Key": "order-42"})
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await _send(client, {**MESSAGE, "subject": "Other"}, **{"Idempotency-Key": "order-42"})
    assert other.status_code == 422
    bad = await _send(client, MESSAGE, **{"Idempotency-Key": "x" * 256})
    assert bad.status_code == 400
    listed = (await client.get("/api/v1/messages")).json()
    assert len(listed["items"]) == 1


async def test_concurrent_identical_requests_create_one_message(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    responses = await asyncio.gather(
        *(_send(client, MESSAGE, **{"Idempotency-Key": "same"}) for _ in range(12))
    )
    assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
    assert len({r.text for r in responses}) == 1
    async with sessionmaker() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Message)) == 1


async def test_an_expired_key_is_a_new_request(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    first = await _send(client, MESSAGE, **{"Idempotency-Key": "k"})
    async with sessionmaker() as session:
        await session.execute(
            sa.update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=25))
        )
        await session.commit()
    second = await _send(client, MESSAGE, **{"Idempotency-Key": "k"})
    assert second.status_code == 202
    assert second.json() != first.json()


async def test_batch_gives_a_result_per_item(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    items = [
        {**MESSAGE, "to": "a@example.com"},
        {**MESSAGE, "to": "broken"},
        {**MESSAGE, "html": "{{ nope }}", "to": "c@example.com"},
        {**MESSAGE, "to": ["d@example.com", "e@example.com"]},
    ]
    response = await client.post("/api/v1/messages/batch", json=items)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 422, 422, 202]
    assert results[1]["error"]["errors"][0]["loc"][0] == "to"
    assert "nope" in results[2]["error"]["detail"]
    assert [m["to"] for m in results[3]["messages"]] == ["d@example.com", "e@example.com"]
    async with sessionmaker() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Message)) == 3
    too_many = await client.post("/api/v1/messages/batch", json=[MESSAGE] * 501)
    assert too_many.status_code == 422
    not_a_list = await client.post("/api/v1/messages/batch", json={"messages": []})
    assert not_a_list.status_code == 422


async def test_list_filters_and_paginates(client: httpx.AsyncClient) -> None:
    await _send(client, {**MESSAGE, "to": ["a@example.com", "b@example.com"]})
    await _send(client, {**MESSAGE, "to": "a@example.com", "tags": ["welcome"]})
    await post_json(client, "/api/v1/suppressions", {"address": "z@example.com"})
    await _send(client, {**MESSAGE, "to": "z@example.com"})
    by_to = (await client.get("/api/v1/messages", params={"to": "A@example.com"})).json()
    assert [m["to_email"] for m in by_to["items"]] == ["a@example.com", "a@example.com"]
    by_tag = (await client.get("/api/v1/messages", params={"tag": "welcome"})).json()
    assert len(by_tag["items"]) == 1
    by_status = (await client.get("/api/v1/messages", params={"status": "suppressed"})).json()
    assert [m["to_email"] for m in by_status["items"]] == ["z@example.com"]
    first = (await client.get("/api/v1/messages", params={"limit": 2})).json()
    rest = (
        await client.get("/api/v1/messages", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    ids = [m["id"] for m in first["items"] + rest["items"]]
    assert len(ids) == 4 and ids == sorted(ids)
    assert (await client.get("/api/v1/messages/999999")).status_code == 404
    assert (await client.get("/api/v1/messages", params={"cursor": "bogus"})).status_code == 400


async def test_rate_limit_per_key_answers_429_with_retry_after(settings: Settings) -> None:
    from app.api.app import create_app
    from tests.helpers.api import ADMIN_TOKEN

    # A slow refill (one request per 10 s): the third request is refused even if a loaded
    # machine takes over a second for the first three.
    app = create_app(settings.model_copy(update={"api_rate": 0.1, "api_rate_burst": 2}))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as client,
    ):
        codes = [(await _send(client, MESSAGE)).status_code for _ in range(3)]
        assert codes[:2] == [202, 202]
        assert codes[2] == 429
        refused = await _send(client, MESSAGE)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["content-type"] == "application/problem+json"
        # reads are not limited
        assert (await client.get("/api/v1/messages")).status_code == 200


async def test_purge_forgets_only_expired_keys(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    from app.messages import idempotency

    await _send(client, MESSAGE, **{"Idempotency-Key": "old"})
    await _send(client, MESSAGE, **{"Idempotency-Key": "new"})
    async with sessionmaker() as session:
        await session.execute(
            sa.update(IdempotencyKey)
            .where(IdempotencyKey.key == "old")
            .values(created_at=utcnow() - timedelta(hours=25))
        )
        assert await idempotency.purge(session, settings.idempotency_ttl) == 1
        await session.commit()
        keys = (await session.scalars(sa.select(IdempotencyKey.key))).all()
    assert list(keys) == ["new"]


async def test_batch_with_hostile_keys_is_answered_and_replayed(client: httpx.AsyncClient) -> None:
    body = b'[{"\\ud800\\u0000key": 1}, {"to": "\\udc00"}]'
    headers = {"content-type": "application/json", "Idempotency-Key": "hostile"}
    first = await client.post("/api/v1/messages/batch", content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert [r["status"] for r in first.json()["results"]] == [422, 422]
    again = await client.post("/api/v1/messages/batch", content=body, headers=headers)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
