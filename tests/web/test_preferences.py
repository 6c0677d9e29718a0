"""The preference centre: lists and name, unsubscribe all, data export, erasure."""

from __future__ import annotations

import json

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.address_hash import hashed_address
from app.core.settings import Settings
from app.models import Event, Subscriber, Suppression
from campaigns.audience import not_suppressed
from tests.helpers.pages import campaign_for, csrf, make_list, make_subscriber, memberships, token


async def test_page_shows_public_lists_and_saves_choices_and_name(
    client: httpx.AsyncClient, settings: Settings, session: AsyncSession
) -> None:
    news = await make_list(client, "News")
    tips = await make_list(client, "Tips", description="Weekly <i>tips</i>")
    secret = await make_list(client, "Staff only", visibility="private")
    member_private = await make_list(client, "VIP", visibility="private")
    subscriber = await make_subscriber(client, "ann@example.com", news, member_private, name="Ann")
    link = f"/p/{token(settings, 'preferences', subscriber, 0)}"

    page = await client.get(link)
    assert page.status_code == 200
    assert "News" in page.text and "Tips" in page.text and "VIP" in page.text
    assert "Staff only" not in page.text
    assert "Weekly &lt;i&gt;tips&lt;/i&gt;" in page.text

    saved = await client.post(
        link,
        data={
            "csrf": csrf(page.text),
            "name": "<script>alert(1)</script>",
            "list": [str(tips), str(member_private), str(secret), "99999", "x"],
        },
    )
    assert saved.status_code == 200, saved.text
    assert "<script>alert" not in saved.text and "&lt;script&gt;" in saved.text
    # News unticked (left), Tips ticked (joined); a private list not offered is untouched.
    assert await memberships(client, subscriber) == {
        news: "unsubscribed",
        tips: "confirmed",
        member_private: "confirmed",
    }
    row = await session.get(Subscriber, subscriber)
    assert row is not None and row.name == "<script>alert(1)</script>"
    kinds = (await session.scalars(sa.select(Event.kind).order_by(Event.id))).all()
    assert list(kinds) == ["subscribed", "unsubscribed"]


async def test_bad_input_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    news = await make_list(client, "News")
    subscriber = await make_subscriber(client, "bob@example.com", news, name="Bob")
    link = f"/p/{token(settings, 'preferences', subscriber, 0)}"
    form = csrf((await client.get(link)).text)
    assert (await client.post(link, data={"name": "x", "list": []})).status_code == 403
    long_name = await client.post(link, data={"csrf": form, "name": "n" * 201})
    assert long_name.status_code == 422
    oversized = await client.post(link, data={"csrf": form, "name": "n" * 5000})
    assert oversized.status_code == 403
    newline = await client.post(link, data={"csrf": form, "name": "a\r\nBcc: x@y.z"})
    assert newline.status_code == 422
    unchecked = await client.post(f"{link}/delete", data={"csrf": csrf(long_name.text, 2)})
    assert unchecked.status_code == 422
    assert await memberships(client, subscriber) == {news: "confirmed"}
    assert (await client.get(f"/api/v1/subscribers/{subscriber}")).json()["name"] == "Bob"


async def test_unsubscribe_all_and_download(client: httpx.AsyncClient, settings: Settings) -> None:
    news, tips = await make_list(client, "News"), await make_list(client, "Tips")
    subscriber = await make_subscriber(
        client, "cy@example.com", news, tips, attributes={"city": "Oslo"}
    )
    link = f"/p/{token(settings, 'preferences', subscriber, 0)}"
    page = await client.get(link)
    done = await client.post(f"{link}/unsubscribe-all", data={"csrf": csrf(page.text, 1)})
    assert done.status_code == 200
    assert set((await memberships(client, subscriber)).values()) == {"unsubscribed"}

    download = await client.get(f"{link}/data.json")
    assert download.status_code == 200
    assert "attachment" in download.headers["content-disposition"]
    data = json.loads(download.text)
    assert data["email"] == "cy@example.com" and data["attributes"] == {"city": "Oslo"}
    assert {item["list"] for item in data["subscriptions"]} == {"News", "Tips"}
    assert [event["kind"] for event in data["events"]] == ["unsubscribed"]


async def test_erasure_leaves_only_a_hashed_suppression_that_the_audience_honours(
    client: httpx.AsyncClient, settings: Settings, session: AsyncSession
) -> None:
    news = await make_list(client, "News")
    subscriber = await make_subscriber(client, "Dee@Example.com", news)
    await client.post("/api/v1/suppressions", json={"address": "dee@example.com"})
    campaign = await campaign_for(client, news)
    await client.post(f"/u/{token(settings, 'unsubscribe', subscriber, campaign)}",
                      data={"List-Unsubscribe": "One-Click"})  # fmt: skip
    link = f"/p/{token(settings, 'preferences', subscriber, campaign)}"
    page = await client.get(link)
    gone = await client.post(f"{link}/delete", data={"csrf": csrf(page.text, 2), "confirm": "yes"})
    assert gone.status_code == 200

    assert await session.get(Subscriber, subscriber) is None
    addresses = (await session.scalars(sa.select(Suppression.address))).all()
    assert list(addresses) == [hashed_address("dee@example.com")]
    emails = (await session.scalars(sa.select(Event.email))).all()
    assert emails and set(emails) == {""}
    found = await client.get("/api/v1/suppressions/dee@example.com")
    assert found.status_code == 200 and found.json()["address"].startswith("sha256:")
    # Every later link of the erased subscriber is simply not valid.
    assert (await client.get(link)).status_code == 400

    # The same address added again is excluded by the audience filter, in SQL.
    await make_subscriber(client, "dee@example.com", news)
    await make_subscriber(client, "eve@example.com", news)
    eligible = await session.scalars(
        sa.select(Subscriber.email).where(not_suppressed(Subscriber.email))
    )
    assert list(eligible) == ["eve@example.com"]
