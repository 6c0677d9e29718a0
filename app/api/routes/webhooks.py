"""/webhooks: signed event deliveries to your URLs, and their delivery log."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.api.deps import PathId, require
from app.api.pagination import Page, PageDep, make_page
from app.api.schemas.webhooks import (
    DeliveryRead,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
    WebhookUpdate,
)
from app.core.http import SessionDep, SettingsDep
from app.models import DeliveryStatus
from app.webhooks import service
from app.webhooks.egress import EgressGuard

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
READ = [Depends(require("webhooks:read"))]
WRITE = [Depends(require("webhooks:write"))]


@router.post("", status_code=201, dependencies=WRITE)
async def create_webhook(
    body: WebhookCreate, session: SessionDep, settings: SettingsDep
) -> WebhookCreated:
    """Subscribe a URL to events; the answer holds the signing secret, shown only now."""
    endpoint = await service.create(
        session,
        url=body.url,
        event_types=body.event_types,
        stream=body.stream,
        campaign_id=body.campaign_id,
        description=body.description,
        guard=EgressGuard.from_settings(settings),
    )
    await session.commit()
    return WebhookCreated.model_validate(endpoint)


@router.get("", dependencies=READ)
async def list_webhooks(session: SessionDep, page: PageDep) -> Page[WebhookRead]:
    """The endpoints."""
    found = await service.page(session, page.after_id, page.limit)
    items = [WebhookRead.model_validate(item) for item in found]
    return make_page(items, [item.id for item in found], page.limit)


@router.get("/{webhook_id}", dependencies=READ)
async def get_webhook(webhook_id: PathId, session: SessionDep) -> WebhookRead:
    """One endpoint."""
    return WebhookRead.model_validate(await service.get(session, webhook_id))


@router.patch("/{webhook_id}", dependencies=WRITE)
async def update_webhook(
    webhook_id: PathId, body: WebhookUpdate, session: SessionDep, settings: SettingsDep
) -> WebhookRead:
    """Change an endpoint; `{"enabled": true}` re-enables it and retries what it missed."""
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    guard = EgressGuard.from_settings(settings)
    endpoint = await service.update(session, webhook_id, changes, guard)
    await session.commit()
    return WebhookRead.model_validate(endpoint)


@router.delete("/{webhook_id}", status_code=204, dependencies=WRITE)
async def delete_webhook(webhook_id: PathId, session: SessionDep) -> Response:
    """Stop delivering to an endpoint and forget its log."""
    await service.delete(session, webhook_id)
    await session.commit()
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", dependencies=READ)
async def list_deliveries(
    webhook_id: PathId, session: SessionDep, page: PageDep, status: DeliveryStatus | None = None
) -> Page[DeliveryRead]:
    """The endpoint's delivery log: attempts, last answer, next try."""
    found = await service.deliveries(session, webhook_id, page.after_id, page.limit, status)
    items = [DeliveryRead.model_validate(item) for item in found]
    return make_page(items, [item.id for item in found], page.limit)
