"""Webhooks: the endpoints, each one's delivery log, and re-enabling one that was disabled
(which retries what it missed), through `app.webhooks.service` as the API's /webhooks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from fastapi.responses import HTMLResponse, RedirectResponse

from app.admin import audit
from app.admin.deps import CurrentAdmin, needs, page_router
from app.admin.pages.forms import DbId
from app.admin.rendering import render
from app.core.http import SessionDep, SettingsDep
from app.models import DeliveryStatus
from app.webhooks import service
from app.webhooks.egress import EgressGuard

router = page_router()
READ = [needs("webhooks:read")]
WRITE = [needs("webhooks:write")]
SHOWN = 500
LOG_SIZE = 100


@router.get("/webhooks", dependencies=READ)
async def webhooks_page(admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """Every endpoint and whether it is enabled."""
    return render(
        "webhooks.html",
        admin,
        title="Webhooks",
        current="/admin/webhooks",
        endpoints=(await service.page(session, 0, SHOWN))[:SHOWN],
    )


@router.get("/webhooks/{webhook_id}", dependencies=READ)
async def webhook_page(
    webhook_id: DbId,
    admin: CurrentAdmin,
    session: SessionDep,
    status: DeliveryStatus | None = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> HTMLResponse:
    """One endpoint and its delivery log (attempts, last answer, next try)."""
    endpoint = await service.get(session, webhook_id)
    found = await service.deliveries(session, webhook_id, after, LOG_SIZE, status)
    shown = found[:LOG_SIZE]
    return render(
        "webhook.html",
        admin,
        title=f"Webhook #{endpoint.id}",
        current="/admin/webhooks",
        endpoint=endpoint,
        deliveries=shown,
        chosen=status.value if status else "",
        statuses=list(DeliveryStatus),
        more=shown[-1].id if len(found) > LOG_SIZE else None,
        can_write=admin.can("webhooks:write"),
    )


@router.post("/webhooks/{webhook_id}/enable", dependencies=WRITE)
async def enable(
    webhook_id: DbId, admin: CurrentAdmin, session: SessionDep, settings: SettingsDep
) -> RedirectResponse:
    """Re-enable the endpoint; its undelivered events are tried again (audited)."""
    guard = EgressGuard.from_settings(settings)
    endpoint = await service.update(session, webhook_id, {"enabled": True}, guard)
    await audit.record(
        session, admin.user, "webhook.enable", f"webhook:{webhook_id}", {"url": endpoint.url}
    )
    await session.commit()
    return RedirectResponse(f"/admin/webhooks/{webhook_id}", status_code=303)


@router.post("/webhooks/{webhook_id}/disable", dependencies=WRITE)
async def disable(
    webhook_id: DbId, admin: CurrentAdmin, session: SessionDep, settings: SettingsDep
) -> RedirectResponse:
    """Stop deliveries to the endpoint (audited)."""
    guard = EgressGuard.from_settings(settings)
    endpoint = await service.update(session, webhook_id, {"enabled": False}, guard)
    await audit.record(
        session, admin.user, "webhook.disable", f"webhook:{webhook_id}", {"url": endpoint.url}
    )
    await session.commit()
    return RedirectResponse(f"/admin/webhooks/{webhook_id}", status_code=303)
