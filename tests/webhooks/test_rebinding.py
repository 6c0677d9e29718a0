"""DNS rebinding against the dispatcher: a scripted DNS server, real receivers, the real API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.app import create_app
from app.core.events import NewEvent, record_events
from app.core.settings import Settings
from app.models import EventKind
from app.webhooks.dispatcher import WebhookDispatcher
from tests.helpers.api import ADMIN_TOKEN, eventually, post_json
from tests.helpers.receivers import receiver
from tests.helpers.scripted_dns import ScriptedDns

PUBLIC = "93.184.216.34"
"""A public address the attacker's name first resolves to; nothing ever connects to it."""


def _quick(settings: Settings, dns: ScriptedDns, **changes: Any) -> Settings:
    return settings.model_copy(
        update={
            "webhook_dns_servers": dns.servers,
            "webhook_settle": 0.0,
            "webhook_poll_interval": 0.05,
            "webhook_retry_base": 0.1,
            "webhook_timeout": 2.0,
            **changes,
        }
    )


@asynccontextmanager
async def _api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as client,
    ):
        yield client


@asynccontextmanager
async def _dispatching(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(WebhookDispatcher(settings, sessionmaker).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _opened(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session:
        await record_events(session, [NewEvent(EventKind.opened, "reader@example.com")])
        await session.commit()


async def test_dns_rebinding_never_reaches_a_private_address(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], dns: ScriptedDns
) -> None:
    name = "hooks.rebind.test"
    # Public when the endpoint is registered, loopback on every later question (TTL 0).
    dns.script(name, lambda n: PUBLIC if n == 0 else "127.0.0.1")
    config = _quick(settings, dns, webhook_allow_private=False)
    async with receiver() as internal, _api(config) as api:
        port = internal.url.rsplit(":", 1)[1].split("/")[0]
        hook = await post_json(
            api,
            "/api/v1/webhooks",
            {"url": f"http://{name}:{port}/hook", "event_types": ["opened"]},
        )
        assert dns.count(name) == 1
        await _opened(sessionmaker)
        seen: list[dict[str, Any]] = []
        async with _dispatching(config, sessionmaker):

            async def three_attempts_three_questions() -> bool:
                log = (await api.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()
                seen[:] = log["items"]
                # One question per attempt: what is connected to is what was checked. (Read
                # while no attempt is between its question and its record.)
                attempts = seen[0]["attempts"] if seen else 0
                return attempts >= 3 and dns.count(name) == 1 + attempts

            await eventually(three_attempts_three_questions, 20, "three refused attempts")
        (entry,) = seen
        assert internal.requests == []
        assert entry["status"] == "pending"
        assert entry["last_error"].startswith(f"refused: {name} resolves to 127.0.0.1")


async def test_an_allowed_delivery_connects_to_the_resolved_address_with_its_host_name(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], dns: ScriptedDns
) -> None:
    name = "hooks.example.test"
    dns.script(name, lambda n: "127.0.0.1")
    config = _quick(settings, dns, webhook_allow_private=True)
    async with receiver() as good, _api(config) as api:
        port = good.url.rsplit(":", 1)[1].split("/")[0]
        hook = await post_json(
            api,
            "/api/v1/webhooks",
            {"url": f"http://{name}:{port}/hook", "event_types": ["opened"]},
        )
        await _opened(sessionmaker)
        async with _dispatching(config, sessionmaker):

            async def delivered() -> bool:
                log = (await api.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()
                return bool(log["items"]) and log["items"][0]["status"] == "delivered"

            await eventually(delivered, 20, "the delivery recorded")
        (request,) = good.requests
        assert request.headers["host"] == f"{name}:{port}"
        assert request.json()["type"] == "opened"
        assert dns.count(name) == 1  # the connection (allowed private: nothing to check before)
