"""Webhook endpoints: create (the secret is shown once), list, re-enable, delete, delivery log."""

from __future__ import annotations

import secrets
from typing import Any

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
from app.webhooks.egress import EgressGuard

SECRET_PREFIX = "whsec_"
EVENT_TYPES = frozenset(kind.value for kind in EventKind)


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
    guard: EgressGuard,
    stream: MessageStream | None = None,
    campaign_id: int | None = None,
    description: str = "",
) -> WebhookEndpoint:
    """A new endpoint with a fresh secret."""
    await guard.check_url(url)
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
    session: AsyncSession, endpoint_id: int, changes: dict[str, Any], guard: EgressGuard
) -> WebhookEndpoint:
    """Change an endpoint; `enabled: true` re-enables it and retries what it missed."""
    endpoint = await get(session, endpoint_id)
    if "url" in changes:
        endpoint.url = await guard.check_url(changes["url"])
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
