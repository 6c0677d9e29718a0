"""Unsubscribe links: RFC 8058 one-click, the confirmation page, undo, bad tokens."""

from __future__ import annotations

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.settings import Settings
from app.models import Event
from tests.helpers.pages import (
    campaign_for,
    csrf,
    make_list,
    make_subscriber,
    memberships,
    token,
)

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


async def _events(session: AsyncSession, kind: str) -> list[Event]:
    return list((await session.scalars(sa.select(Event).where(Event.kind == kind))).all())


async def test_one_click_post_unsubscribes_at_once_and_replay_changes_nothing(
    client: httpx.AsyncClient, settings: Settings, session: AsyncSession
) -> None:
    news, other = await make_list(client, "News"), await make_list(client, "Other")
    subscriber = await make_subscriber(client, "ann@example.com", news, other)
    campaign = await campaign_for(client, news)
    link = f"/u/{token(settings, 'unsubscribe', subscriber, campaign)}"

    # A provider's POST: no cookies, no form token, just the RFC 8058 body.
    bare = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    response = await bare.post(link, data=ONE_CLICK)
    assert response.status_code == 200
    assert "set-cookie" not in response.headers and "location" not in response.headers
    assert await memberships(client, subscriber) == {news: "unsubscribed", other: "confirmed"}

    replay = await bare.post(link, data=ONE_CLICK)
    assert replay.status_code == 200
    events = await _events(session, "unsubscribed")
    assert len(events) == 1
    assert events[0].campaign_id == campaign and events[0].data["lists"] == [news]


async def test_get_changes_nothing_and_the_page_names_the_list(
    client: httpx.AsyncClient, settings: Settings, session: AsyncSession
) -> None:
    news = await make_list(client, "Weekly <b>News</b>")
    subscriber = await make_subscriber(client, "bob@example.com", news)
    campaign = await campaign_for(client, news)
    link = f"/u/{token(settings, 'unsubscribe', subscriber, campaign)}"
    for _ in range(3):  # a link scanner fetching the link, again and again
        page = await client.get(link)
        assert page.status_code == 200
    assert "Weekly &lt;b&gt;News&lt;/b&gt;" in page.text and "<b>News" not in page.text
    head = await client.head(link)
    assert head.status_code in (200, 405)
    assert await memberships(client, subscriber) == {news: "confirmed"}
    assert await _events(session, "unsubscribed") == []


async def test_page_choice_all_mail_then_undo_restores_exactly_what_was_left(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    news, other, old = [await make_list(client, n) for n in ("News", "Other", "Old")]
    subscriber = await make_subscriber(client, "cy@example.com", news, other, old)
    campaign = await campaign_for(client, news)
    link = f"/u/{token(settings, 'unsubscribe', subscriber, campaign)}"
    # Left long ago: an undo must not bring this one back.
    await client.post(
        f"/u/{token(settings, 'unsubscribe', subscriber, await campaign_for(client, old))}",
        data=ONE_CLICK,
    )
    page = await client.get(link)
    done = await client.post(f"{link}/confirm", data={"csrf": csrf(page.text), "scope": "all"})
    assert done.status_code == 200, done.text
    assert set((await memberships(client, subscriber)).values()) == {"unsubscribed"}
    assert "Undo" in done.text

    lists_field = f"{min(news, other)},{max(news, other)}"
    forged = await client.post(f"{link}/undo", data={"csrf": csrf(done.text), "lists": f"{old}"})
    assert forged.status_code == 403  # the list state is signed with the form
    undone = await client.post(f"{link}/undo", data={"csrf": csrf(done.text), "lists": lists_field})
    assert undone.status_code == 200
    assert await memberships(client, subscriber) == {
        news: "confirmed",
        other: "confirmed",
        old: "unsubscribed",
    }


async def test_page_form_needs_its_form_token(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    news = await make_list(client, "News")
    ann = await make_subscriber(client, "ann@example.com", news)
    bob = await make_subscriber(client, "bob@example.com", news)
    campaign = await campaign_for(client, news)
    ann_link = f"/u/{token(settings, 'unsubscribe', ann, campaign)}"
    bob_link = f"/u/{token(settings, 'unsubscribe', bob, campaign)}"
    ann_csrf = csrf((await client.get(ann_link)).text)
    for data in ({}, {"csrf": ""}, {"csrf": "1.abc"}, {"csrf": ann_csrf + "0"}):
        assert (await client.post(f"{ann_link}/confirm", data=data)).status_code == 403
    # A form token from Ann's page does nothing on Bob's.
    assert (await client.post(f"{bob_link}/confirm", data={"csrf": ann_csrf})).status_code == 403
    big = await client.post(f"{ann_link}/confirm", data={"csrf": ann_csrf, "scope": "x" * 5000})
    assert big.status_code == 403
    odd = await client.post(f"{ann_link}/confirm", data={"csrf": ann_csrf, "scope": "<script>"})
    assert odd.status_code == 400 and "<script>" not in odd.text
    assert await memberships(client, ann) == {news: "confirmed"}
    assert await memberships(client, bob) == {news: "confirmed"}


async def test_forged_truncated_and_foreign_tokens_get_the_invalid_page(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    news = await make_list(client, "News")
    subscriber = await make_subscriber(client, "dee@example.com", news)
    campaign = await campaign_for(client, news)
    genuine = token(settings, "unsubscribe", subscriber, campaign)
    mac = genuine.rpartition(".")[2]
    other_subscriber = token(settings, "unsubscribe", subscriber + 1, campaign).split(".")[0]
    bad = [
        genuine[:-1],  # truncated
        genuine[:10],
        f"{other_subscriber}.{mac}",  # someone else's id with this MAC
        token(settings, "preferences", subscriber, campaign),  # another purpose's token
        token(settings, "unsubscribe", subscriber),  # wrong shape
        "x" * 500,
        "..",
        "Zm9v.bar",
    ]
    for value in bad:
        for method in ("GET", "POST"):
            response = await client.request(method, f"/u/{value}", data=ONE_CLICK)
            assert response.status_code in (400, 404), (value, response.status_code)
            if response.status_code == 400:
                assert "This link is not valid" in response.text
                assert "dee@example.com" not in response.text
    assert await memberships(client, subscriber) == {news: "confirmed"}


async def test_one_click_with_a_wrong_body_changes_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    news = await make_list(client, "News")
    subscriber = await make_subscriber(client, "eve@example.com", news)
    link = f"/u/{token(settings, 'unsubscribe', subscriber, await campaign_for(client, news))}"
    for data in ({}, {"List-Unsubscribe": "yes"}, {"List-Unsubscribe": "One-Click" * 1000}):
        assert (await client.post(link, data=data)).status_code == 400
    assert (await client.post(link, content=b"\x00" * 10_000)).status_code == 400
    assert await memberships(client, subscriber) == {news: "confirmed"}
    # Multipart, as some providers send it, and a bare body both count.
    multipart = await client.post(link, files={"List-Unsubscribe": (None, "One-Click")})
    assert multipart.status_code == 200
    assert await memberships(client, subscriber) == {news: "unsubscribed"}
    bare = await client.post(
        link,
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "text/plain"},
    )
    assert bare.status_code == 200
