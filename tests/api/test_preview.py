"""GET /campaigns/{id}/preview: naming a subscriber takes `subscribers:read` too, and every
link in a preview looks real but does nothing (a preview is no way to a subscriber's pages)."""

from __future__ import annotations

import re

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience import unsubscribe as unsubscribe_service
from app.core import api_keys
from app.core.settings import Settings
from tests.helpers.pages import make_list, make_subscriber, memberships

HTML = (
    "<p>Hi {{ subscriber.name }}</p>"
    '<a href="https://shop.example.com/sale">Sale</a>'
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a>'
    '<a href="{{ preferences_url }}">Preferences</a>'
    '<a href="{{ view_in_browser_url }}">View</a>'
)
LINK = re.compile(r"https?://[^/\s\"<>]+(/[a-z]/[A-Za-z0-9_.=-]+)")
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


async def _key(session: AsyncSession, *scopes: str) -> dict[str, str]:
    _, token = await api_keys.create_key(session, "previewer", list(scopes))
    await session.commit()
    return {"Authorization": f"Bearer {token}"}


async def test_a_subscriber_preview_needs_subscribers_read(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    news = await make_list(client, "News")
    subscriber = await make_subscriber(client, "ann@example.com", news, name="Ann")
    body = {"name": "c", "subject": "Hi", "from_email": "n@example.com", "list_ids": [news]}
    campaign = (await client.post("/api/v1/campaigns", json={**body, "html": HTML})).json()["id"]
    path = f"/api/v1/campaigns/{campaign}/preview"
    campaigns_only = await _key(session, "campaigns:read")
    refused = await client.get(path, params={"subscriber_id": subscriber}, headers=campaigns_only)
    assert refused.status_code == 403
    assert "subscribers:read" in refused.json()["detail"]
    assert "ann@example.com" not in refused.text
    sample = await client.get(path, headers=campaigns_only)
    assert sample.status_code == 200 and "Jane Doe" in sample.json()["html"]
    both = await _key(session, "campaigns:read", "subscribers:read")
    shown = await client.get(path, params={"subscriber_id": subscriber}, headers=both)
    assert shown.status_code == 200 and "Hi Ann" in shown.json()["html"]


async def test_no_link_in_a_preview_acts_on_the_subscriber(
    client: httpx.AsyncClient, settings: Settings, session: AsyncSession
) -> None:
    news, other = await make_list(client, "News"), await make_list(client, "Other")
    subscriber = await make_subscriber(client, "bob@example.com", news, other, name="Bob")
    body = {"name": "c", "subject": "Hi", "from_email": "n@example.com", "list_ids": [news]}
    created = await client.post(
        "/api/v1/campaigns", json={**body, "html": HTML, "text": "{{ unsubscribe_url }}"}
    )
    campaign = created.json()["id"]
    await client.patch(f"/api/v1/campaigns/{campaign}", json={"tracking": True})
    shown = await client.get(
        f"/api/v1/campaigns/{campaign}/preview", params={"subscriber_id": subscriber}
    )
    assert shown.status_code == 200, shown.text
    preview = shown.json()
    headers = dict(preview["headers"])
    found = LINK.findall(f"{preview['html']} {preview['text']} {headers['List-Unsubscribe']}")
    kinds = {path[1] for path in found}
    assert {"u", "p", "v", "c"} <= kinds, found  # the links look as real as in mail
    for path in found:
        for method in ("GET",) if path[1] in "cov" else ("GET", "POST"):
            response = await client.request(method, path, data=ONE_CLICK)
            assert response.status_code == 400, (method, path, response.status_code)
            assert "This link is not valid" in response.text
            assert "bob@example.com" not in response.text
        if path.startswith("/p/"):
            for action in ("/data.json", "/delete", "/unsubscribe-all"):
                method = "GET" if action == "/data.json" else "POST"
                response = await client.request(method, path + action, data={"confirm": "yes"})
                assert response.status_code == 400, (path + action, response.status_code)
    # The mailto unsubscribe of the preview's List-Unsubscribe names nobody either.
    mailto = re.search(r"mailto:unsubscribe\+([^@]+)@", headers["List-Unsubscribe"])
    assert mailto is not None
    assert (
        await unsubscribe_service.resolve(session, settings.effective_secret_key(), mailto[1])
    ) is None
    assert await memberships(client, subscriber) == {news: "confirmed", other: "confirmed"}
    assert (await client.get(f"/api/v1/subscribers/{subscriber}")).status_code == 200
