"""/api/v1/bounces: the relay webhook, the record with its evidence, scopes, bad input."""

from __future__ import annotations

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import api_keys
from app.core.settings import Settings
from app.mail import identity
from app.mail.identity import Kind
from app.models import Send, SendStatus, Subscriber
from tests.helpers.api import create_campaign, post_json


async def _ledger_row(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], email: str
) -> tuple[int, int]:
    """(campaign id, ledger row id) of a message sent to `email`."""
    news = (await post_json(client, "/api/v1/lists", {"name": "news"}))["id"]
    await post_json(client, "/api/v1/subscribers", {"email": email, "lists": [news]})
    campaign = await create_campaign(client, news)
    async with sessionmaker() as session:
        subscriber = await session.scalar(sa.select(Subscriber.id))
        send = Send(
            campaign_id=campaign, subscriber_id=subscriber, email=email, status=SendStatus.sent
        )
        session.add(send)
        await session.commit()
        return campaign, send.id


async def test_webhook_bounce_by_message_id_is_attributed_and_acted_on(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    campaign, row = await _ledger_row(client, sessionmaker, "gone@example.com")
    message_id = identity.message_id(
        settings.effective_secret_key(), row, settings.mta_hostname, Kind.CAMPAIGN
    )
    created = await post_json(
        client,
        "/api/v1/bounces",
        {
            "email": "gone@example.com",
            "status": "5.1.1",
            "diagnostic": "550 5.1.1 The email account does not exist",
            "message_id": message_id,
        },
    )
    assert (created["send_id"], created["campaign_id"], created["source"]) == (
        row,
        campaign,
        "webhook",
    )
    assert (created["bounce_class"], created["severity"], created["action"]) == (
        "invalid_recipient",
        "hard",
        "suppressed",
    )
    suppression = (await client.get("/api/v1/suppressions/gone@example.com")).json()
    assert suppression["source"] == "bounce"
    detail = (await client.get(f"/api/v1/bounces/{created['id']}")).json()
    assert '"status":"5.1.1"' in detail["raw"]
    stats = (await client.get(f"/api/v1/campaigns/{campaign}/stats")).json()
    assert (stats["bounced"], stats["bounced_hard"]) == (1, 1)


async def test_webhook_complaint_and_address_without_ledger_row(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    campaign, row = await _ledger_row(client, sessionmaker, "annoyed@example.com")
    complaint = await post_json(
        client,
        "/api/v1/bounces",
        {"email": "Annoyed@Example.com", "type": "complaint", "campaign_id": campaign},
    )
    assert (complaint["kind"], complaint["send_id"]) == ("complaint", row)
    assert (await client.get("/api/v1/suppressions/annoyed@example.com")).json()[
        "scope"
    ] == "broadcast"
    stats = (await client.get(f"/api/v1/campaigns/{campaign}/stats")).json()
    assert stats["complained"] == 1
    # A relay is trusted with addresses Warta has no ledger row for (e.g. sent elsewhere).
    soft = await post_json(
        client, "/api/v1/bounces", {"email": "stranger@example.net", "status": "4.2.2"}
    )
    assert (soft["bounce_class"], soft["action"], soft["send_id"]) == (
        "mailbox_full",
        "scored 1",
        None,
    )


async def test_list_is_cursor_paginated_and_filtered(client: httpx.AsyncClient) -> None:
    for index in range(3):
        await post_json(
            client, "/api/v1/bounces", {"email": f"u{index}@example.net", "status": "5.2.2"}
        )
    first = (await client.get("/api/v1/bounces", params={"limit": 2})).json()
    assert [item["email"] for item in first["items"]] == ["u0@example.net", "u1@example.net"]
    assert "raw" not in first["items"][0]
    second = (
        await client.get("/api/v1/bounces", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert [item["email"] for item in second["items"]] == ["u2@example.net"]
    assert second["next_cursor"] is None
    only = (await client.get("/api/v1/bounces", params={"email": "U1@example.net"})).json()
    assert [item["email"] for item in only["items"]] == ["u1@example.net"]
    assert (await client.get("/api/v1/bounces", params={"campaign_id": 7})).json()["items"] == []


async def test_bad_input_gets_problem_documents_and_stores_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    forged = identity.message_id("another-secret", 1, settings.mta_hostname, Kind.CAMPAIGN)
    cases = [
        ({}, 422),
        ({"email": "not-an-address"}, 422),
        ({"email": "a@example.com", "status": "9.9.9"}, 422),
        ({"email": "a@example.com", "type": "unsubscribe"}, 422),
        ({"email": "a@example.com", "diagnostic": "x" * 2001}, 422),
        ({"email": "a@example.com", "diagnostic": "nul\x00byte"}, 422),
        ({"email": "a@example.com", "campaign_id": 0}, 422),
        ({"email": "a@example.com", "surprise": 1}, 422),
        ({"email": "a@example.com", "message_id": forged}, 422),
        ({"email": "a@example.com", "message_id": "<c1.x\r\nBcc: y@z>"}, 422),
    ]
    for body, status in cases:
        response = await client.post("/api/v1/bounces", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    # A well-signed Message-ID for a row that does not exist.
    unknown = identity.message_id(
        settings.effective_secret_key(), 424242, settings.mta_hostname, Kind.CAMPAIGN
    )
    response = await client.post(
        "/api/v1/bounces", json={"email": "a@example.com", "message_id": unknown}
    )
    assert response.status_code == 404
    garbage = await client.post(
        "/api/v1/bounces", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert garbage.status_code in (400, 422)
    huge = await client.post(
        "/api/v1/bounces",
        content=b'{"email": "a@example.com", "diagnostic": "' + b"x" * 2_000_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413
    assert (await client.get("/api/v1/bounces/999")).status_code == 404
    assert (await client.get("/api/v1/bounces", params={"cursor": "bogus"})).status_code == 400
    assert (await client.get("/api/v1/bounces")).json()["items"] == []
    assert (await client.get("/api/v1/suppressions")).json()["items"] == []


async def test_scopes(client: httpx.AsyncClient, session: AsyncSession) -> None:
    _, reader = await api_keys.create_key(session, "reader", ["bounces:read"])
    _, writer = await api_keys.create_key(session, "relay", ["bounces:write"])
    await session.commit()
    body = {"email": "a@example.com", "status": "5.1.1"}
    as_reader = {"Authorization": f"Bearer {reader}"}
    assert (await client.post("/api/v1/bounces", json=body, headers=as_reader)).status_code == 403
    assert (await client.get("/api/v1/bounces", headers=as_reader)).status_code == 200
    as_relay = {"Authorization": f"Bearer {writer}"}
    assert (await client.post("/api/v1/bounces", json=body, headers=as_relay)).status_code == 201
