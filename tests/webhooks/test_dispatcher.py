"""Webhooks end to end: real HTTP receivers on 127.0.0.1, a real worker running the dispatcher."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.events import NewEvent, record_events
from app.core.settings import Settings
from app.models import Event, EventKind, WebhookDelivery, utcnow
from app.webhooks import repository
from app.webhooks.dispatcher import WebhookDispatcher
from tests.helpers.api import eventually, post_json
from tests.helpers.receivers import HANG, receiver
from tests.helpers.sinks import SinkHandler

MESSAGE = {
    "from": "shop@example.com",
    "to": "alice@example.com",
    "subject": "Receipt",
    "text": "Thanks",
}
TOLERANCE = 300


def verify(secret: str, header: str, body: bytes, now: float) -> bool:
    """The check a receiver makes (the README's snippet, in test form)."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    if abs(now - timestamp) > TOLERANCE:
        return False
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


@pytest.fixture
def engine_settings(settings: Settings, sink: tuple[str, SinkHandler]) -> Settings:
    return settings.model_copy(
        update={
            "mta_submission": sink[0],
            "sender_connections": 4,
            "webhook_allow_private": True,
            "webhook_settle": 0.1,
            "webhook_poll_interval": 0.05,
            "webhook_retry_base": 0.2,
            "webhook_timeout": 1.0,
        }
    )


async def _hook(api: httpx.AsyncClient, url: str, kinds: list[str], **extra: Any) -> dict[str, Any]:
    return await post_json(api, "/api/v1/webhooks", {"url": url, "event_types": kinds, **extra})


async def _deliveries(api: httpx.AsyncClient, hook_id: int) -> list[dict[str, Any]]:
    response = await api.get(f"/api/v1/webhooks/{hook_id}/deliveries")
    return list(response.json()["items"])


async def test_signed_deliveries_verify_and_follow_filters(
    api: httpx.AsyncClient, worker: None
) -> None:
    async with receiver() as good:
        hook = await _hook(api, good.url, ["queued", "sent"])
        assert hook["secret"].startswith("whsec_")
        broadcast_only = await _hook(api, good.url + "/b", ["queued", "sent"], stream="broadcast")
        assert "secret" not in (await api.get(f"/api/v1/webhooks/{hook['id']}")).json()
        response = await api.post("/api/v1/messages", json=MESSAGE)
        message_id = response.json()["messages"][0]["id"]

        async def both() -> bool:
            return len(good.requests) >= 2

        await eventually(both, 20, "two webhook deliveries")
        for request in good.requests:
            assert request.path == "/hook"
            assert request.headers["content-type"] == "application/json"
            signature = request.headers["warta-signature"]
            assert verify(hook["secret"], signature, request.body, time.time())
            assert not verify(hook["secret"], signature, request.body + b" ", time.time())
            assert not verify("whsec_other", signature, request.body, time.time())
        payloads = sorted((r.json() for r in good.requests), key=lambda p: p["id"])
        assert [p["type"] for p in payloads] == ["queued", "sent"]
        assert {p["message_id"] for p in payloads} == {message_id}
        assert {p["stream"] for p in payloads} == {"transactional"}
        timeline = (await api.get(f"/api/v1/messages/{message_id}")).json()["events"]
        assert [p["id"] for p in payloads] == [e["id"] for e in timeline]
        for request in good.requests:
            assert request.headers["warta-event-id"] == str(request.json()["id"])
        assert await _deliveries(api, broadcast_only["id"]) == []
        log = await _deliveries(api, hook["id"])
        assert {d["status"] for d in log} == {"delivered"}
        assert {d["response_code"] for d in log} == {200}


async def test_a_failing_receiver_gets_the_same_event_until_it_succeeds(
    api: httpx.AsyncClient, worker: None
) -> None:
    async with receiver(lambda n: 500 if n < 3 else 200) as flaky:
        hook = await _hook(api, flaky.url, ["queued"])
        await api.post("/api/v1/messages", json=MESSAGE)

        async def delivered() -> bool:
            log = await _deliveries(api, hook["id"])
            return bool(log) and log[0]["status"] == "delivered"

        await eventually(delivered, 30, "delivery after three failures")
        (entry,) = await _deliveries(api, hook["id"])
        assert entry["attempts"] == 4
        assert len(flaky.requests) == 4
        assert len({r.headers["warta-event-id"] for r in flaky.requests}) == 1
        gaps = [b.received_at - a.received_at for a, b in zip(flaky.requests, flaky.requests[1:])]
        # exponential backoff from 0.2 s: each wait at least the base times 2^n
        assert all(gap >= 0.2 * 2**n * 0.9 for n, gap in enumerate(gaps)), gaps


async def test_a_hanging_receiver_times_out_without_holding_up_others(
    api: httpx.AsyncClient, worker: None
) -> None:
    async with receiver(lambda n: HANG) as stuck, receiver() as good:
        stuck_hook = await _hook(api, stuck.url, ["queued"])
        good_hook = await _hook(api, good.url, ["queued"])
        started = time.monotonic()
        await api.post("/api/v1/messages", json=MESSAGE)

        async def good_got_it() -> bool:
            return len(good.requests) == 1

        await eventually(good_got_it, 20, "delivery to the healthy receiver")
        assert good.requests[0].received_at - started < 5
        # Both go out in one tick: had the hanging request held the way, the healthy one
        # would arrive only after the 1 s timeout.

        async def stuck_called() -> bool:
            return len(stuck.requests) == 1

        await eventually(stuck_called, 20, "the request to the hanging receiver")
        assert abs(good.requests[0].received_at - stuck.requests[0].received_at) < 1.0

        async def timed_out() -> bool:
            log = await _deliveries(api, stuck_hook["id"])
            return bool(log) and "timeout" in log[0]["last_error"]

        await eventually(timed_out, 20, "the hanging receiver's timeout recorded")
        (entry,) = await _deliveries(api, stuck_hook["id"])
        assert entry["status"] == "pending" and entry["attempts"] >= 1
        assert (await _deliveries(api, good_hook["id"]))[0]["status"] == "delivered"


async def test_persistent_failure_disables_and_the_api_re_enables(
    engine_settings: Settings, sink: tuple[str, SinkHandler]
) -> None:
    from app.api.app import create_app
    from tests.helpers.api import ADMIN_TOKEN
    from workers.worker import run_worker

    settings = engine_settings.model_copy(update={"webhook_retry_window": 1.0})
    healthy = False
    app = create_app(settings)
    stop = asyncio.Event()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as api,
        receiver(lambda n: 200 if healthy else 503) as down,
    ):
        task = asyncio.create_task(run_worker(settings, settings.redis_url, stop))
        try:
            hook = await _hook(api, down.url, ["queued"])
            await api.post("/api/v1/messages", json=MESSAGE)

            async def disabled() -> bool:
                shown = (await api.get(f"/api/v1/webhooks/{hook['id']}")).json()
                return shown["enabled"] is False

            await eventually(disabled, 30, "endpoint disabled")
            shown = (await api.get(f"/api/v1/webhooks/{hook['id']}")).json()
            assert "HTTP 503" in shown["disabled_reason"]
            (entry,) = await _deliveries(api, hook["id"])
            assert entry["status"] == "failed"
            tries = len(down.requests)
            assert tries >= 2
            healthy = True
            patched = await api.patch(f"/api/v1/webhooks/{hook['id']}", json={"enabled": True})
            assert patched.status_code == 200 and patched.json()["enabled"] is True

            async def redelivered() -> bool:
                log = await _deliveries(api, hook["id"])
                return log[0]["status"] == "delivered"

            await eventually(redelivered, 20, "delivery after re-enabling")
            assert down.requests[-1].json()["id"] == down.requests[0].json()["id"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def test_webhook_api_refuses_bad_and_unsafe_urls(client: httpx.AsyncClient) -> None:
    cases = [
        ({"url": "ftp://example.com/hook", "event_types": ["sent"]}, 422),
        ({"url": "file:///etc/passwd", "event_types": ["sent"]}, 422),
        ({"url": "http://127.0.0.1:9/hook", "event_types": ["sent"]}, 422),
        ({"url": "http://10.1.2.3/hook", "event_types": ["sent"]}, 422),
        ({"url": "http://[::1]/hook", "event_types": ["sent"]}, 422),
        ({"url": "http://169.254.169.254/latest", "event_types": ["sent"]}, 422),
        # Multicast, and IPv6 forms that carry a private IPv4 address (6to4, NAT64, mapped).
        ({"url": "http://224.0.0.1/hook", "event_types": ["sent"]}, 422),
        ({"url": "http://[ff02::1]/hook", "event_types": ["sent"]}, 422),
        ({"url": "http://[2002:7f00:1::]/hook", "event_types": ["sent"]}, 422),
        ({"url": "http://[64:ff9b::a00:1]/hook", "event_types": ["sent"]}, 422),
        ({"url": "http://[::ffff:10.0.0.1]/hook", "event_types": ["sent"]}, 422),
        ({"url": "http://user:pw@93.184.216.34/hook", "event_types": ["sent"]}, 422),
        ({"url": "https://93.184.216.34/hook", "event_types": ["exploded"]}, 422),
        ({"url": "https://93.184.216.34/hook", "event_types": []}, 422),
        ({"url": "https://93.184.216.34/hook", "event_types": ["sent"], "campaign_id": 99}, 422),
        ({"url": "https://93.184.216.34/hook", "event_types": ["sent"], "extra": 1}, 422),
    ]
    for body, status in cases:
        response = await client.post("/api/v1/webhooks", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    created = await post_json(
        client, "/api/v1/webhooks", {"url": "https://93.184.216.34/hook", "event_types": ["sent"]}
    )
    listed = (await client.get("/api/v1/webhooks")).json()["items"]
    assert [item["id"] for item in listed] == [created["id"]]
    assert "secret" not in listed[0]
    bad_patch = await client.patch(f"/api/v1/webhooks/{created['id']}", json={"url": "gopher://x"})
    assert bad_patch.status_code == 422
    assert (await client.delete(f"/api/v1/webhooks/{created['id']}")).status_code == 204
    assert (await client.get(f"/api/v1/webhooks/{created['id']}")).status_code == 404
    assert (await client.get("/api/v1/webhooks/1/deliveries")).status_code == 404


async def test_two_dispatchers_fan_out_each_event_once(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], client: httpx.AsyncClient
) -> None:
    await post_json(
        client, "/api/v1/webhooks", {"url": "https://93.184.216.34/a", "event_types": ["opened"]}
    )
    await post_json(
        client, "/api/v1/webhooks", {"url": "https://93.184.216.34/b", "event_types": ["opened"]}
    )
    async with sessionmaker() as session:
        await record_events(
            session,
            [NewEvent(EventKind.opened, f"r{i}@example.com") for i in range(1200)]
            + [NewEvent(EventKind.clicked, "x@example.com")],
        )
        await session.commit()
    quick = settings.model_copy(update={"webhook_settle": 0.0})
    first = WebhookDispatcher(quick, sessionmaker)
    second = WebhookDispatcher(quick, sessionmaker)
    try:
        for _ in range(10):
            await asyncio.gather(first.fan_out(), second.fan_out())
    finally:
        await first.client.aclose()
        await second.client.aclose()
    async with sessionmaker() as session:
        rows = (
            await session.execute(sa.select(WebhookDelivery.endpoint_id, WebhookDelivery.event_id))
        ).all()
    assert len(rows) == 2400
    assert len(set(rows)) == 2400


async def test_without_endpoints_the_cursor_skips_ahead_and_new_endpoints_start_fresh(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], client: httpx.AsyncClient
) -> None:
    async with sessionmaker() as session:
        await record_events(session, [NewEvent(EventKind.opened, "old@example.com")] * 3)
        await session.commit()
    quick = settings.model_copy(update={"webhook_settle": 0.0})
    dispatcher = WebhookDispatcher(quick, sessionmaker)
    try:
        assert await dispatcher.fan_out() == 0
        await post_json(
            client,
            "/api/v1/webhooks",
            {"url": "https://93.184.216.34/a", "event_types": ["opened"]},
        )
        async with sessionmaker() as session:
            await record_events(session, [NewEvent(EventKind.opened, "new@example.com")])
            await session.commit()
        assert await dispatcher.fan_out() == 1
    finally:
        await dispatcher.client.aclose()


async def test_without_endpoints_a_poll_is_one_query_and_the_skip_waits_its_interval(
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    statements: list[str] = []
    sa.event.listen(
        engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2])
    )

    async def events(count: int) -> list[int]:
        async with sessionmaker() as session:
            await record_events(session, [NewEvent(EventKind.opened, "a@example.com")] * count)
            await session.commit()
            return list(await session.scalars(sa.select(Event.id).order_by(Event.id)))

    async def cursor() -> int:
        async with sessionmaker() as session:
            return await repository.cursor_position(session)

    await events(3)
    dispatcher = WebhookDispatcher(
        settings.model_copy(update={"webhook_settle": 0.0}), sessionmaker
    )
    try:
        assert await dispatcher.fan_out() == 0  # the first poll skips
        ids = await events(2)
        assert await cursor() == ids[2]
        statements.clear()
        for _ in range(5):
            assert await dispatcher.fan_out() == 0
        assert len(statements) == 5, statements  # the endpoints, nothing else
        assert await cursor() == ids[2]
        monkeypatch.setattr(dispatcher, "_next_skip", time.monotonic())  # the interval passed
        assert await dispatcher.fan_out() == 0
        assert await cursor() == ids[4]
    finally:
        await dispatcher.client.aclose()


async def test_the_skip_ahead_stops_before_the_first_event_still_settling(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # Events commit out of id order: one still settling holds back every id after it.
    async with sessionmaker() as session:
        await record_events(session, [NewEvent(EventKind.opened, "a@example.com")] * 5)
        await session.commit()
        ids = list(await session.scalars(sa.select(Event.id).order_by(Event.id)))
        hour_ago = utcnow() - timedelta(hours=1)
        await session.execute(
            sa.update(Event).where(Event.id != ids[2]).values(created_at=hour_ago)
        )
        await session.commit()
        cutoff = utcnow() - timedelta(minutes=1)
        assert await repository.settled_end(session, 0, cutoff, 100) == ids[1]
        assert await repository.settled_end(session, 0, cutoff, 1) == ids[0]
        assert await repository.settled_end(session, ids[2], cutoff, 100) == ids[4]
        assert await repository.settled_end(session, ids[4], cutoff, 100) == ids[4]
        assert await repository.settled_end(session, 0, utcnow(), 100) == ids[4]
