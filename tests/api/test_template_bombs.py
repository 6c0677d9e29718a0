"""Template bombs through the API: refused with a 422 naming the limit when a template is saved
(templates, campaigns), sent (POST /messages), scheduled, previewed or test-sent, and the
public pages keep answering while one is being refused (renders run off the event loop)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest

from app.core.settings import Settings
from tests.helpers.pages import make_list, make_subscriber, token
from tests.helpers.template_bombs import BOMBS, TIME_BOMB

PICKED = (
    "'x'.ljust",
    "'x'.rjust",
    "'x'.center",
    "'1'.zfill",
    "'{:>5000}'.format",
    ".replace('x'",
    ".expandtabs(",
    "'%5000s'|format",
    "'x'|center",
    "|indent(",
    "|wordwrap(",
    "{% for i in range(2000) %}",
)
SAVED = [next(source for source in BOMBS if picked in source) for picked in PICKED]
"""The bombs of the security review, each checked one by one in tests/mail as well."""
DATA_FED = (
    "{% for i in range(subscriber.attributes.n|default(1)) %}"
    "{% for j in range(subscriber.attributes.n|default(1)) %}{% endfor %}{% endfor %}Hi"
)
"""Harmless for the sample recipient, 2.25 million loop iterations for the subscriber with
n = 1500: only a render with their data can tell."""


def _refused(response: httpx.Response, pattern: str) -> None:
    assert response.status_code == 422, (response.status_code, response.text[:300])
    assert re.search(pattern, response.json()["detail"]), response.json()["detail"]


@pytest.mark.parametrize("source", SAVED)
async def test_a_bomb_is_refused_when_saved_or_sent(client: httpx.AsyncClient, source: str) -> None:
    pattern = BOMBS[source]
    template = {"name": "t", "subject": "s", "html": "", "text": source}
    _refused(await client.post("/api/v1/templates", json=template), pattern)
    news = await make_list(client, "News")
    campaign = {"name": "c", "subject": "s", "from_email": "n@example.com", "list_ids": [news]}
    _refused(await client.post("/api/v1/campaigns", json={**campaign, "html": source}), pattern)
    created = await client.post("/api/v1/campaigns", json={**campaign, "text": "fine"})
    assert created.status_code == 201, created.text
    path = f"/api/v1/campaigns/{created.json()['id']}"
    _refused(await client.patch(path, json={"text": source}), pattern)
    message = {"from": "a@example.com", "to": "b@example.com", "subject": "s", "text": source}
    _refused(await client.post("/api/v1/messages", json=message), pattern)
    assert (await client.get("/api/v1/templates")).json()["items"] == []


async def test_a_bomb_fed_by_subscriber_data_is_refused_where_it_renders(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    news = await make_list(client, "News")
    subscriber = await make_subscriber(client, "big@example.com", news, attributes={"n": 1500})
    body = {"name": "c", "subject": "s", "from_email": "n@example.com", "list_ids": [news]}
    created = await client.post("/api/v1/campaigns", json={**body, "text": DATA_FED})
    assert created.status_code == 201, created.text  # nothing to say without the data
    campaign = created.json()["id"]
    limit = r"loops ran more than 1,000,000 iterations|ran longer than"
    _refused(await client.post(f"/api/v1/campaigns/{campaign}/schedule"), limit)
    _refused(await client.post(f"/api/v1/campaigns/{campaign}/test", json=_test()), limit)
    preview = f"/api/v1/campaigns/{campaign}/preview"
    _refused(await client.get(preview, params={"subscriber_id": subscriber}), limit)
    assert (await client.get(preview)).status_code == 200  # the sample renders
    shown = await client.get(f"/v/{token(settings, 'view', subscriber, campaign)}")
    assert shown.status_code == 503 and "cannot be shown" in shown.text
    assert (await client.get(f"/api/v1/campaigns/{campaign}")).json()["status"] == "draft"


def _test() -> dict[str, Any]:
    return {"addresses": ["qa@example.com"]}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/messages", {"from": "a@example.com", "to": "b@example.com", "subject": "s"}),
        ("/api/v1/templates", {"name": "t", "subject": "s", "html": ""}),
    ],
)
async def test_public_pages_answer_while_a_bomb_is_refused(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    bomb = asyncio.create_task(client.post(path, json={**body, "text": TIME_BOMB}))
    took, slowest = await _healthz_meanwhile(client, bomb)
    _refused(await bomb, r"ran longer than \d+ s")
    # The bomb ran for its whole time budget; the event loop served others meanwhile.
    assert slowest < took / 2, (slowest, took)


async def test_public_pages_answer_while_a_large_template_compiles(
    client: httpx.AsyncClient,
) -> None:
    # 130 KB of tags take Jinja seconds to compile: once done on the event loop.
    body = {
        "from": "a@example.com",
        "to": "b@example.com",
        "subject": "s",
        "text": "{% if a %}x{% endif %}" * 6_000,
        "data": {"a": 1},
    }
    sending = asyncio.create_task(client.post("/api/v1/messages", json=body))
    took, slowest = await _healthz_meanwhile(client, sending)
    response = await sending
    assert response.status_code == 202, response.text[:300]
    assert slowest < took / 2, (slowest, took)


async def _healthz_meanwhile(
    client: httpx.AsyncClient, request: asyncio.Task[httpx.Response]
) -> tuple[float, float]:
    """Ask /healthz again and again while `request` runs: (how long it ran, the slowest
    answer). A render on the event loop would hold one answer for all of its time."""
    started = time.monotonic()
    slowest = 0.0
    while not request.done():
        asked = time.monotonic()
        health = await client.get("/healthz", headers={"Authorization": ""})
        assert health.status_code == 200
        slowest = max(slowest, time.monotonic() - asked)
    return time.monotonic() - started, slowest


async def test_a_template_too_complex_to_compile_quickly_is_422(client: httpx.AsyncClient) -> None:
    body = {"from": "a@example.com", "to": "b@example.com", "subject": "s"}
    dense = "{{ a }}" * 20_000  # compiled, 1.9 MB of Python: the compiler would hold the GIL
    _refused(await client.post("/api/v1/messages", json={**body, "text": dense}), "too complex")
    template = {"name": "t", "subject": "s", "html": dense}
    _refused(await client.post("/api/v1/templates", json=template), "too complex")
