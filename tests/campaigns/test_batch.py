"""A whole campaign, API to SMTP sink, with a real worker, Redis and database."""

from __future__ import annotations

import httpx

from app.core.settings import Settings
from app.mail import identity
from tests.helpers.api import create_campaign, post_json, wait_for_status
from tests.helpers.sinks import SinkHandler


async def test_every_eligible_recipient_gets_exactly_one_message(
    api: httpx.AsyncClient,
    worker: None,
    sink: tuple[str, SinkHandler],
    engine_settings: Settings,
) -> None:
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    double = (await post_json(api, "/api/v1/lists", {"name": "dbl", "optin": "double"}))["id"]
    other = (await post_json(api, "/api/v1/lists", {"name": "other"}))["id"]
    eligible = set()
    for index in range(30):
        address = f"reader{index}@example.com"
        await post_json(
            api,
            "/api/v1/subscribers",
            {"email": address, "name": f"Reader {index}", "lists": [news, double]},
        )
        eligible.add(address)
    confirmed = await post_json(
        api,
        "/api/v1/subscribers",
        {"email": "confirmed@example.com", "lists": [double], "preconfirm": True},
    )
    eligible.add(confirmed["email"])
    await post_json(
        api, "/api/v1/subscribers", {"email": "unconfirmed@example.com", "lists": [double]}
    )
    await post_json(
        api, "/api/v1/subscribers", {"email": "elsewhere@example.com", "lists": [other]}
    )
    await post_json(
        api,
        "/api/v1/subscribers",
        {"email": "blocked@example.com", "lists": [news], "status": "blocklisted"},
    )
    gone = await post_json(
        api, "/api/v1/subscribers", {"email": "gone@example.com", "lists": [news]}
    )
    await api.put(f"/api/v1/subscribers/{gone['id']}/lists/{news}", json={"status": "unsubscribed"})
    await post_json(
        api, "/api/v1/subscribers", {"email": "suppressed@example.com", "lists": [news]}
    )
    await post_json(api, "/api/v1/suppressions", {"address": "suppressed@example.com"})

    campaign_id = await create_campaign(
        api,
        news,
        double,
        name="November",
        subject="Hello {{ subscriber.name | default('friend') }}",
        from_email="Warta News <news@example.com>",
        html="<p>Hi {{ subscriber.name }}</p><a href='{{ unsubscribe_url }}'>unsubscribe</a>",
    )
    await post_json(api, f"/api/v1/campaigns/{campaign_id}/schedule", {})
    stats = await wait_for_status(api, campaign_id, "finished")

    received = sink[1].snapshot()
    recipients = [rcpt for item in received for rcpt in item.rcpt_tos]
    assert sorted(recipients) == sorted(eligible)
    assert stats["sent"] == len(eligible)
    assert stats["recipients"] == len(eligible)
    secret = engine_settings.effective_secret_key()
    for item in received:
        message = item.message
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "<http://127.0.0.1:8000/u/" in message["List-Unsubscribe"]
        assert identity.parse_verp(secret, item.mail_from) is not None
        assert item.mail_from.endswith("@" + engine_settings.bounce_domain)
    assert len({item.message_id for item in received}) == len(received)


async def test_impossible_transitions_are_409(api: httpx.AsyncClient) -> None:
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    campaign_id = await create_campaign(
        api, news, name="c", subject="s", from_email="a@example.com", text="t"
    )
    response = await api.post(f"/api/v1/campaigns/{campaign_id}/pause")
    assert response.status_code == 409
    assert "cannot pause a campaign that is draft" in response.json()["detail"]
    assert (await api.post(f"/api/v1/campaigns/{campaign_id}/resume")).status_code == 409


async def test_schedule_refuses_a_campaign_that_does_not_render(api: httpx.AsyncClient) -> None:
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    await post_json(
        api, "/api/v1/subscribers", {"email": "a@example.com", "lists": [news], "attributes": {}}
    )
    campaign_id = await create_campaign(
        api,
        news,
        name="c",
        subject="s",
        from_email="a@example.com",
        html="<p>{{ subscriber.attributes.city }}</p>",
    )
    response = await api.post(f"/api/v1/campaigns/{campaign_id}/schedule")
    assert response.status_code == 422
    assert "does not render" in response.json()["detail"]
    assert (await api.get(f"/api/v1/campaigns/{campaign_id}")).json()["status"] == "draft"


async def test_preview_shows_the_real_message(api: httpx.AsyncClient) -> None:
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    ada = await post_json(
        api,
        "/api/v1/subscribers",
        {
            "email": "ada@example.com",
            "name": "Ada",
            "lists": [news],
            "attributes": {"city": "Oslo"},
        },
    )
    campaign_id = await create_campaign(
        api,
        news,
        name="c",
        subject="Hi {{ subscriber.name }} in {{ subscriber.attributes.city | default('?') }}",
        from_email="News <news@example.com>",
        html="<p>Dear {{ subscriber.name }} &amp; co</p>",
    )
    response = await api.get(
        f"/api/v1/campaigns/{campaign_id}/preview", params={"subscriber_id": ada["id"]}
    )
    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["subject"] == "Hi Ada in Oslo"
    assert "Dear Ada &amp; co" in preview["html"]
    assert "Dear Ada & co" in preview["text"]
    names = [name for name, _ in preview["headers"]]
    for header in ("Date", "Message-ID", "From", "To", "Subject", "List-Unsubscribe", "List-Id"):
        assert header in names
    sample = await api.get(f"/api/v1/campaigns/{campaign_id}/preview")
    assert sample.json()["subject"] == "Hi Jane Doe in ?"


async def test_test_send_goes_through_the_priority_queue(
    api: httpx.AsyncClient, worker: None, sink: tuple[str, SinkHandler]
) -> None:
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    campaign_id = await create_campaign(
        api,
        news,
        name="c",
        subject="Test {{ subscriber.name }}",
        from_email="a@example.com",
        text="Body",
    )
    response = await api.post(
        f"/api/v1/campaigns/{campaign_id}/test", json={"addresses": ["qa@example.com"]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["replies"][0].startswith("qa@example.com: delivered")
    received = sink[1].snapshot()
    assert [item.rcpt_tos for item in received] == [("qa@example.com",)]
    assert received[0].message["Subject"] == "Test Test Recipient"
    assert (await api.get(f"/api/v1/campaigns/{campaign_id}")).json()["status"] == "draft"


async def test_one_click_unsubscribe_from_a_received_message(
    api: httpx.AsyncClient, worker: None, sink: tuple[str, SinkHandler]
) -> None:
    news = (await post_json(api, "/api/v1/lists", {"name": "Weekly news"}))["id"]
    reader = await post_json(
        api, "/api/v1/subscribers", {"email": "r@example.com", "lists": [news]}
    )
    campaign_id = await create_campaign(
        api, news, name="c", subject="s", from_email="a@example.com", text="t"
    )
    await post_json(api, f"/api/v1/campaigns/{campaign_id}/schedule", {})
    await wait_for_status(api, campaign_id, "finished")
    header = str(sink[1].snapshot()[0].message["List-Unsubscribe"])
    path = header.split("<http://127.0.0.1:8000", 1)[1].split(">", 1)[0]

    page = await api.get(path)  # what a link scanner does
    assert page.status_code == 200
    assert "Weekly news" in page.text
    member = (await api.get(f"/api/v1/subscribers/{reader['id']}")).json()["lists"][0]
    assert member["status"] == "confirmed"

    tampered = await api.post(
        path[:-2] + "xx",
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert tampered.status_code == 400
    assert "not valid" in tampered.text

    done = await api.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded", "Authorization": ""},
    )
    assert done.status_code == 200
    assert "set-cookie" not in done.headers
    member = (await api.get(f"/api/v1/subscribers/{reader['id']}")).json()["lists"][0]
    assert member["status"] == "unsubscribed"
