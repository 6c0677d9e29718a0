"""Public subscription: hosted form, keyless API, double opt-in mail, limits, honeypot, CORS."""

from __future__ import annotations

import re

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.app import create_app
from app.core.settings import Settings
from app.models import Event, Subscriber
from tests.helpers.api import ADMIN_TOKEN, eventually
from tests.helpers.pages import csrf, make_list, make_subscriber, memberships
from tests.helpers.sinks import SinkHandler

CONFIRM_LINK = re.compile(r"https?://\S+/confirm/[A-Za-z0-9_.-]+")


async def _public_token(client: httpx.AsyncClient, name: str) -> str:
    lists = (await client.get("/api/v1/public/lists")).json()
    return str(next(item["token"] for item in lists if item["name"] == name))


def _from(client: httpx.AsyncClient, ip: str) -> httpx.AsyncClient:
    """A keyless client whose requests come from `ip`."""
    app = client._transport.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_double_opt_in_through_the_hosted_form_and_the_confirmation_mail(
    api: httpx.AsyncClient,
    worker: None,
    sink: tuple[str, SinkHandler],
    session: AsyncSession,
) -> None:
    double = await make_list(api, "Letters", optin="double")
    form_token = await _public_token(api, "Letters")
    form = await api.get(f"/s/{form_token}")
    assert form.status_code == 200 and 'for="email"' in form.text
    posted = await api.post(
        f"/s/{form_token}", data={"csrf": csrf(form.text), "email": "New@Example.com", "name": "N"}
    )
    assert posted.status_code == 200 and "confirmation link" in posted.text

    handler = sink[1]

    async def mailed() -> bool:
        return len(handler.snapshot()) == 1

    await eventually(mailed, 30, "the confirmation mail")
    mail = handler.snapshot()[0]
    assert mail.rcpt_tos == ("new@example.com",)
    body = mail.message.get_body(("plain",))
    assert body is not None
    link = CONFIRM_LINK.search(body.get_content())
    assert link is not None
    path = "/confirm/" + link.group(0).rsplit("/confirm/", 1)[1]
    subscriber = await session.scalar(
        sa.select(Subscriber.id).where(Subscriber.email == "new@example.com")
    )
    assert subscriber is not None
    assert await memberships(api, subscriber) == {double: "unconfirmed"}

    page = await api.get(path)  # a scanner following the link confirms nothing
    assert page.status_code == 200
    assert await memberships(api, subscriber) == {double: "unconfirmed"}
    done = await api.post(path, data={"csrf": csrf(page.text)})
    assert done.status_code == 200 and "confirmed" in done.text
    assert await memberships(api, subscriber) == {double: "confirmed"}
    again = await api.post(path, data={"csrf": csrf(page.text)})  # replayed
    assert again.status_code == 200
    kinds = (await session.scalars(sa.select(Event.kind))).all()
    assert list(kinds) == ["subscribed"]
    assert (await api.get(path[:-2])).status_code == 400  # truncated


async def test_same_answer_for_known_and_unknown_addresses(
    client: httpx.AsyncClient,
) -> None:
    news = await make_list(client, "News")
    await make_subscriber(client, "known@example.com", news)
    list_token = await _public_token(client, "News")
    answers = []
    for address in ("known@example.com", "unknown@example.com"):
        response = await _from(client, "10.0.0.1").post(
            "/api/v1/public/subscriptions", json={"email": address, "lists": [list_token]}
        )
        answers.append((response.status_code, response.json()))
    assert answers[0] == answers[1] and answers[0][0] == 202


async def test_bad_input_to_the_public_api(client: httpx.AsyncClient, settings: Settings) -> None:
    await make_list(client, "News")
    await make_list(client, "Hidden", visibility="private")
    public = await _public_token(client, "News")
    from app.mail import identity

    hidden_id = (await client.get("/api/v1/lists")).json()["items"][1]["id"]
    hidden = identity.link_token(settings.effective_secret_key(), "list", hidden_id)
    anonymous = _from(client, "10.0.0.2")
    bad = [
        {},
        {"email": "", "lists": [public]},
        {"email": "not-an-address", "lists": [public]},
        {"email": "a@b.c\r\nBcc: x@y.z", "lists": [public]},
        {"email": "x" * 400 + "@example.com", "lists": [public]},
        {"email": "a@example.com", "lists": []},
        {"email": "a@example.com", "lists": [public + "x"]},
        {"email": "a@example.com", "lists": [hidden]},
        {"email": "a@example.com", "lists": [public] * 21},
        {"email": "a@example.com", "lists": [public], "extra": 1},
    ]
    for body in bad:
        response = await anonymous.post("/api/v1/public/subscriptions", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    malformed = await anonymous.post(
        "/api/v1/public/subscriptions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert malformed.status_code == 400
    total = (await client.get("/api/v1/subscribers")).json()["items"]
    assert total == []


async def test_honeypot_is_answered_like_a_person_and_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    await make_list(client, "News")
    list_token = await _public_token(client, "News")
    anonymous = _from(client, "10.0.0.3")
    response = await anonymous.post(
        "/api/v1/public/subscriptions",
        json={"email": "bot@example.com", "lists": [list_token], "website": "http://spam"},
    )
    assert response.status_code == 202
    form = await anonymous.get(f"/s/{list_token}")
    posted = await anonymous.post(
        f"/s/{list_token}",
        data={"csrf": csrf(form.text), "email": "bot2@example.com", "website": "x"},
    )
    assert posted.status_code == 200
    assert (await client.get("/api/v1/subscribers")).json()["items"] == []


async def test_a_thousand_attempts_from_one_ip_are_limited_and_lose_nobody(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    news = await make_list(client, "News")
    existing = await make_subscriber(client, "old@example.com", news)
    list_token = await _public_token(client, "News")
    bot = _from(client, "203.0.113.9")
    statuses = []
    for n in range(1000):
        response = await bot.post(
            "/api/v1/public/subscriptions",
            json={"email": f"victim{n}@example.com", "lists": [list_token]},
        )
        statuses.append(response.status_code)
    assert statuses.count(202) == settings.subscribe_limit_per_ip
    assert statuses.count(429) == 1000 - settings.subscribe_limit_per_ip
    # A real subscriber elsewhere is not affected, nor is anyone already stored.
    person = await _from(client, "198.51.100.7").post(
        "/api/v1/public/subscriptions", json={"email": "real@example.com", "lists": [list_token]}
    )
    assert person.status_code == 202
    assert await memberships(client, existing) == {news: "confirmed"}
    # Mail bombing one address from many places stops at the per-address limit.
    codes = []
    for n in range(6):
        response = await _from(client, f"192.0.2.{n + 1}").post(
            "/api/v1/public/subscriptions",
            json={"email": "target@example.com", "lists": [list_token]},
        )
        codes.append(response.status_code)
    limit = settings.subscribe_limit_per_address
    assert codes == [202] * limit + [429] * (6 - limit)


async def test_cors_only_for_configured_origins_and_only_the_public_api(
    settings: Settings,
) -> None:
    app = create_app(settings.model_copy(update={"public_cors_origins": "https://example.org"}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as web:
            preflight = {
                "Origin": "https://example.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            }
            ok = await web.options("/api/v1/public/subscriptions", headers=preflight)
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == "https://example.org"
            other = await web.options(
                "/api/v1/public/subscriptions", headers={**preflight, "Origin": "https://evil.test"}
            )
            assert "access-control-allow-origin" not in other.headers
            private = await web.get(
                "/api/v1/lists",
                headers={"Origin": "https://example.org", "Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert "access-control-allow-origin" not in private.headers


async def test_bad_input_to_the_hosted_form(client: httpx.AsyncClient) -> None:
    await make_list(client, "News")
    list_token = await _public_token(client, "News")
    web = _from(client, "10.0.0.4")
    form = csrf((await web.get(f"/s/{list_token}")).text)
    cases = [
        ({"csrf": form, "email": ""}, 422),
        ({"csrf": form, "email": "no-at-sign"}, 422),
        ({"csrf": form, "email": "<script>alert(1)</script>@x.y"}, 422),
        ({"csrf": form, "email": "a@example.com", "name": "n" * 201}, 422),
        ({"csrf": form, "email": "a" * 5000 + "@example.com"}, 403),  # oversized field
        ({"email": "a@example.com"}, 403),  # no form token
        ({"csrf": "123.forged", "email": "a@example.com"}, 403),
    ]
    for data, status in cases:
        response = await web.post(f"/s/{list_token}", data=data)
        assert response.status_code == status, (data, response.text)
        assert "<script>alert" not in response.text
    assert (await web.get("/s/not-a-list-token")).status_code == 400
    assert (await client.get("/api/v1/subscribers")).json()["items"] == []


async def test_a_form_does_not_put_back_someone_who_left_a_single_opt_in_list(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    news = await make_list(client, "News")
    subscriber = await make_subscriber(client, "left@example.com", news)
    await client.put(
        f"/api/v1/subscribers/{subscriber}/lists/{news}", json={"status": "unsubscribed"}
    )
    list_token = await _public_token(client, "News")
    response = await _from(client, "10.0.0.5").post(
        "/api/v1/public/subscriptions", json={"email": "left@example.com", "lists": [list_token]}
    )
    assert response.status_code == 202
    assert await memberships(client, subscriber) == {news: "unsubscribed"}
