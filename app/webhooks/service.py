"""Webhook endpoints: create (the secret is shown once), list, re-enable, delete, delivery log."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Invalid, NotFound
from app.models import (
    Campaign,
    DeliveryStatus,
    EventKind,
    MessageStream,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)

SECRET_PREFIX = "whsec_"
EVENT_TYPES = frozenset(kind.value for kind in EventKind)


class UnsafeUrl(Invalid):
    """A webhook URL Warta refuses to call."""


async def check_url(url: str, allow_private: bool) -> str:
    """http(s) only; with `allow_private` off, hosts must resolve to public addresses only.

    The check runs at creation and again before every delivery (DNS may change).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("a webhook URL must start with http:// or https://")
    if not parts.hostname:
        raise UnsafeUrl("the webhook URL has no host")
    if parts.username or parts.password:
        raise UnsafeUrl("the webhook URL may not carry a user name or password")
    try:
        _ = parts.port
    except ValueError:
        raise UnsafeUrl("the webhook URL has an invalid port") from None
    if not allow_private:
        for address in await _addresses(parts.hostname):
            if not address.is_global:
                raise UnsafeUrl(
                    f"{parts.hostname} resolves to {address}, which is not a public address "
                    "(set WARTA_WEBHOOK_ALLOW_PRIVATE=true to allow it)"
                )
    return url


async def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeUrl(f"the webhook host {host} does not resolve") from None
    return [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]


def check_event_types(kinds: list[str]) -> list[str]:
    """Known event kinds, deduplicated; unknown ones are Invalid."""
    unknown = sorted(set(kinds) - EVENT_TYPES)
    if unknown:
        raise Invalid(f"unknown event types {unknown}; known: {', '.join(sorted(EVENT_TYPES))}")
    return sorted(set(kinds))


async def create(
    session: AsyncSession,
    *,
    url: str,
    event_types: list[str],
    allow_private: bool,
    stream: MessageStream | None = None,
    campaign_id: int | None = None,
    description: str = "",
) -> WebhookEndpoint:
    """A new endpoint with a fresh secret."""
    await check_url(url, allow_private)
    if campaign_id is not None and await session.get(Campaign, campaign_id) is None:
        raise Invalid(f"campaign {campaign_id} does not exist")
    endpoint = WebhookEndpoint(
        url=url,
        description=description,
        secret=SECRET_PREFIX + secrets.token_urlsafe(32),
        event_types=check_event_types(event_types),
        stream=stream,
        campaign_id=campaign_id,
        enabled=True,
        disabled_reason="",
    )
    session.add(endpoint)
    await session.flush()
    return endpoint


async def get(session: AsyncSession, endpoint_id: int) -> WebhookEndpoint:
    """The endpoint, or NotFound."""
    found = await session.get(WebhookEndpoint, endpoint_id)
    if found is None:
        raise NotFound(f"webhook {endpoint_id} does not exist")
    return found


async def update(
    session: AsyncSession, endpoint_id: int, changes: dict[str, Any], allow_private: bool
) -> WebhookEndpoint:
    """Change an endpoint; `enabled: true` re-enables it and retries what it missed."""
    endpoint = await get(session, endpoint_id)
    if "url" in changes:
        endpoint.url = await check_url(changes["url"], allow_private)
    if "event_types" in changes:
        endpoint.event_types = check_event_types(changes["event_types"])
    if "description" in changes:
        endpoint.description = changes["description"]
    if changes.get("enabled") is True and not endpoint.enabled:
        endpoint.enabled = True
        endpoint.disabled_reason = ""
        now = utcnow()
        await session.execute(
            sa.update(WebhookDelivery)
            .where(
                WebhookDelivery.endpoint_id == endpoint.id,
                WebhookDelivery.status != DeliveryStatus.delivered,
            )
            .values(status=DeliveryStatus.pending, next_attempt_at=now, created_at=now)
            .execution_options(synchronize_session=False)
        )
    elif changes.get("enabled") is False:
        endpoint.enabled = False
        endpoint.disabled_reason = "disabled through the API"
    await session.flush()
    return endpoint


async def delete(session: AsyncSession, endpoint_id: int) -> None:
    """Delete an endpoint and its delivery log."""
    await session.delete(await get(session, endpoint_id))
    await session.flush()


async def page(session: AsyncSession, after_id: int, limit: int) -> list[WebhookEndpoint]:
    """Up to `limit + 1` endpoints after `after_id`."""
    query = (
        sa.select(WebhookEndpoint)
        .where(WebhookEndpoint.id > after_id)
        .order_by(WebhookEndpoint.id)
        .limit(limit + 1)
    )
    return list((await session.scalars(query)).all())


async def deliveries(
    session: AsyncSession,
    endpoint_id: int,
    after_id: int,
    limit: int,
    status: DeliveryStatus | None,
) -> list[WebhookDelivery]:
    """The endpoint's delivery log, oldest first."""
    await get(session, endpoint_id)
    query = sa.select(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.id > after_id
    )
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    query = query.order_by(WebhookDelivery.id).limit(limit + 1)
    return list((await session.scalars(query)).all())
