"""Tokens with non-ASCII characters (`²` passes `str.isdigit`, `é` makes `hmac.compare_digest`
raise, a surrogate's UTF-8 is not UTF-8) get the plain "invalid link" page on every public
page, never a 500; form fields with them are refused or ignored the same way."""

from __future__ import annotations

import httpx
import pytest

from app.core.settings import Settings
from app.web.forms import valid
from tests.helpers.pages import campaign_for, csrf, make_list, make_subscriber, memberships, token

HOSTILE = ["%C2%B2", "%C3%A9", "%ED%A0%80", "%FF", "%C2%B2%C2%B2.%C2%B2"]
"""Percent-encoded as a browser sends them: `²`, `é`, the UTF-8 of the surrogate U+D800
(invalid UTF-8), a lone 0xFF byte, and a token-shaped run of `²`."""
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def _variants(genuine: str, value: str) -> list[str]:
    """The hostile value alone, as the MAC of a genuine body, and as the body of its MAC."""
    body, _, mac = genuine.rpartition(".")
    return [value, f"{body}.{value}", f"{value}.{mac}", f"{body}.{mac[:-2]}{value}"]


PAGES = [
    ("GET", "/u/{}"),
    ("POST", "/u/{}"),
    ("POST", "/u/{}/confirm"),
    ("POST", "/u/{}/undo"),
    ("GET", "/u/m/{}"),
    ("POST", "/u/m/{}"),
    ("GET", "/p/{}"),
    ("POST", "/p/{}"),
    ("POST", "/p/{}/unsubscribe-all"),
    ("GET", "/p/{}/data.json"),
    ("POST", "/p/{}/delete"),
    ("GET", "/v/{}"),
    ("GET", "/c/{}"),
    ("HEAD", "/c/{}"),
    ("GET", "/o/{}"),
    ("GET", "/s/{}"),
    ("POST", "/s/{}"),
    ("GET", "/confirm/{}"),
    ("POST", "/confirm/{}"),
]


@pytest.mark.parametrize("value", HOSTILE)
async def test_every_page_answers_a_non_ascii_token_with_the_invalid_link_page(
    client: httpx.AsyncClient, settings: Settings, value: str
) -> None:
    news = await make_list(client, "News")
    subscriber = await make_subscriber(client, "ann@example.com", news)
    campaign = await campaign_for(client, news)
    genuine = token(settings, "unsubscribe", subscriber, campaign)
    for method, path in PAGES:
        for variant in _variants(genuine, value):
            response = await client.request(method, path.format(variant), data=ONE_CLICK)
            assert response.status_code == 400, (method, path, variant, response.text[:300])
            if method != "HEAD":
                assert "This link is not valid" in response.text
                assert "ann@example.com" not in response.text
    assert await memberships(client, subscriber) == {news: "confirmed"}


async def test_non_ascii_form_tokens_and_fields_are_refused_or_ignored(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    news = await make_list(client, "News")
    subscriber = await make_subscriber(client, "bo@example.com", news)
    campaign = await campaign_for(client, news)
    unsubscribe = f"/u/{token(settings, 'unsubscribe', subscriber, campaign)}"
    for bad in ("²²²²²²²²²².abc", "1700000000.é", "1700000000.\udcff", "²"):
        assert not valid(settings.effective_secret_key(), "unsubscribe", "t", bad)
    for encoded in ("%C2%B2%C2%B2.abc", "1700000000.%C3%A9", "1700000000.%ED%A0%80", "%FF"):
        response = await client.post(
            f"{unsubscribe}/confirm",
            content=f"csrf={encoded}&scope=all".encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 403, response.text[:300]
    # A genuine form token with a non-ASCII list id: the id is ignored, nothing fails.
    preferences = f"/p/{token(settings, 'preferences', subscriber, campaign)}"
    page = await client.get(preferences)
    saved = await client.post(
        preferences,
        data={"csrf": csrf(page.text), "name": "Bo", "list": ["²", "\u0661", str(news)]},
    )
    assert saved.status_code == 200, saved.text[:300]
    assert await memberships(client, subscriber) == {news: "confirmed"}
