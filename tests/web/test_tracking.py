"""Open and click tracking: rewriting, signed redirects only to the campaign's URLs, verdicts."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.settings import Settings
from app.mail import identity, tracking
from app.mail.rendering import compile_campaign, render, sample_recipient
from app.models import Send, utcnow
from tests.helpers.api import post_json, wait_for_status
from tests.helpers.pages import campaign_for, make_list, make_subscriber, token
from tests.helpers.sinks import SinkHandler

HTML = (
    "<html><body><p>Hi {{ subscriber.name }}</p>"
    '<a href="https://shop.example.com/a?x=1&amp;y=2">A</a> '
    "<a class='b' href='https://shop.example.com/b'>B</a> "
    '<a href="https://shop.example.com/a?x=1&amp;y=2">A again</a> '
    '<a href="https://shop.example.com/p?s={{ subscriber.email }}">personal</a> '
    '<a href="{{ unsubscribe_url }}">unsubscribe</a>'
    '<link href="https://cdn.example.com/style.css" rel="stylesheet">'
    "</body></html>"
)
CLICK = re.compile(r"""href=["'](http://[^"']+/c/[^"']+)["']""")
PIXEL = re.compile(r'src="(http://[^"]+/o/[^"]+)"')


class _Source:
    id, name, subject, html, text = 7, "c", "s", HTML, "text"


def test_rewrite_tracks_static_anchor_links_only() -> None:
    rewritten = tracking.rewrite(HTML)
    assert rewritten.urls == ("https://shop.example.com/a?x=1&y=2", "https://shop.example.com/b")
    assert "{{ warta_links[0] }}" in rewritten.html and "{{ warta_links[1] }}" in rewritten.html
    assert "https://shop.example.com/p?s={{ subscriber.email }}" in rewritten.html
    assert "https://cdn.example.com/style.css" in rewritten.html
    assert rewritten.html.index("{{ warta_open_pixel }}") < rewritten.html.index("</body>")


def test_untracked_render_of_a_tracked_campaign_keeps_the_original_links() -> None:
    compiled = compile_campaign(_Source(), track=True)
    html = render(compiled, sample_recipient()).html or ""
    assert 'href="https://shop.example.com/a?x=1&amp;y=2"' in html
    assert "/o/" not in html and "<img" not in html


def test_verdicts() -> None:
    assert tracking.classify_open("Mozilla/5.0", "17.58.1.2").reason == "apple-mpp"
    assert tracking.classify_open(
        "Mozilla/5.0 (via ggpht.com GoogleImageProxy)", "66.1.1.1"
    ).machine
    assert not tracking.classify_open("Mozilla/5.0 (X11; Linux) Firefox/120.0", "192.0.2.1").machine
    person = "Mozilla/5.0 (X11; Linux) Firefox/120.0"
    assert tracking.classify_click("HEAD", person, 3600).reason == "head-request"
    assert tracking.classify_click("GET", "Mozilla/5.0 Barracuda", 3600).machine
    assert tracking.classify_click("GET", person, 2).reason == "within-seconds-of-delivery"
    assert not tracking.classify_click("GET", person, 3600).machine


async def _send(api: httpx.AsyncClient, sink: tuple[str, SinkHandler], **fields: object) -> int:
    news = await make_list(api, "News")
    for n in range(2):
        await make_subscriber(api, f"r{n}@example.com", news, name=f"R{n}")
    campaign = await campaign_for(api, news, html=HTML, **fields)
    await post_json(api, f"/api/v1/campaigns/{campaign}/schedule", {})
    await wait_for_status(api, campaign, "finished")
    return campaign


async def test_tracking_is_off_by_default(
    api: httpx.AsyncClient, worker: None, sink: tuple[str, SinkHandler]
) -> None:
    campaign = await _send(api, sink)
    assert (await api.get(f"/api/v1/campaigns/{campaign}")).json()["tracking"] is False
    for mail in sink[1].snapshot():
        html = mail.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert "/c/" not in html and "/o/" not in html
        assert "href='https://shop.example.com/b'" in html


async def test_clicks_and_opens_of_a_tracked_campaign(
    api: httpx.AsyncClient,
    worker: None,
    sink: tuple[str, SinkHandler],
    session: AsyncSession,
    settings: Settings,
) -> None:
    campaign = await _send(api, sink, tracking=True)
    mails = sorted(sink[1].snapshot(), key=lambda m: m.rcpt_tos)
    assert len(mails) == 2
    html = mails[0].message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    clicks = CLICK.findall(html)
    assert len(clicks) == 3  # links 0, 1, 0 again; personal and unsubscribe links untouched
    assert "https://shop.example.com/p?s=r0@example.com" in html
    pixel = PIXEL.search(html)
    assert pixel is not None
    path = lambda url: "/" + url.split("/", 3)[3]  # noqa: E731

    # Delivered a minute ago: clicks now are a reader's, not a gateway's instant scan.
    await session.execute(sa.update(Send).values(sent_at=utcnow() - timedelta(minutes=1)))
    await session.commit()
    person = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"}
    first = await api.get(path(clicks[0]), headers=person)
    assert first.status_code == 302
    assert first.headers["location"] == "https://shop.example.com/a?x=1&y=2"
    assert (await api.get(path(clicks[2]), headers=person)).status_code == 302
    second = await api.get(path(clicks[1]), headers=person)
    assert second.headers["location"] == "https://shop.example.com/b"
    scanner = await api.head(path(clicks[1]), headers=person)
    assert scanner.status_code == 302

    # Tokens are signed with the link position: no edited position, no foreign URL.
    secret = settings.effective_secret_key()
    genuine = path(clicks[1]).rsplit("/", 1)[1]
    assert (await api.get(f"/c/{genuine[:-1]}x")).status_code == 400  # tampered MAC
    assert (await api.get(f"/c/{genuine[:-3]}")).status_code == 400  # truncated
    moved = identity.tracking_token(secret, "click", 1, campaign, 0).split(".")[0]
    assert (await api.get(f"/c/{moved}.{genuine.split('.')[1]}")).status_code == 400  # position
    beyond = identity.tracking_token(secret, "click", 1, campaign, 99)
    assert (await api.get(f"/c/{beyond}")).status_code == 400  # not a link of the campaign
    other = identity.tracking_token(secret, "open", 1, campaign)
    assert (await api.get(f"/c/{other}")).status_code == 400  # another purpose's token
    assert (await api.get(f"/c/{token(settings, 'click', 1, campaign, 0)}")).status_code == 400

    assert (await api.get(path(pixel.group(1)), headers=person)).headers["content-type"] == (
        "image/gif"
    )
    mpp_app = api._transport.app  # type: ignore[attr-defined]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mpp_app, client=("17.58.0.1", 4000)),
        base_url="http://testserver",
    ) as apple:
        assert (
            await apple.get(path(pixel.group(1)), headers={"User-Agent": "Mozilla/5.0"})
        ).status_code == 200

    stats = (await api.get(f"/api/v1/campaigns/{campaign}/links")).json()
    assert stats["opens"] == {"total": 1, "unique": 1, "machine_total": 1, "machine_unique": 1}
    links = {item["url"]: item["clicks"] for item in stats["links"]}
    assert links["https://shop.example.com/a?x=1&y=2"] == {
        "total": 2, "unique": 1, "machine_total": 0, "machine_unique": 0,
    }  # fmt: skip
    assert links["https://shop.example.com/b"] == {
        "total": 1, "unique": 1, "machine_total": 1, "machine_unique": 1,
    }  # fmt: skip
    counts = (await api.get(f"/api/v1/campaigns/{campaign}/links")).status_code
    assert counts == 200
    assert (await api.get("/api/v1/campaigns/999999/links")).status_code == 404


async def test_view_in_browser_shows_the_subscribers_copy_untracked(
    api: httpx.AsyncClient, worker: None, sink: tuple[str, SinkHandler], settings: Settings
) -> None:
    campaign = await _send(api, sink, tracking=True)
    subscriber = (await api.get("/api/v1/subscribers")).json()["items"][0]
    view = await api.get(f"/v/{token(settings, 'view', subscriber['id'], campaign)}")
    assert view.status_code == 200
    assert f"Hi {subscriber['name']}" in view.text
    assert "href='https://shop.example.com/b'" in view.text and "/o/" not in view.text
    assert "sandbox" in view.headers["content-security-policy"]
    assert (
        await api.get(f"/v/{token(settings, 'view', subscriber['id'], 999)}")
    ).status_code == 400
    assert (
        await api.get(f"/v/{token(settings, 'unsubscribe', subscriber['id'], campaign)}")
    ).status_code == 400
