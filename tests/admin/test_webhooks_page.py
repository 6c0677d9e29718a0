"""Webhooks in the console: the delivery log, and re-enabling a disabled endpoint retries
what it missed (audited); a marketer is refused by the server."""

from __future__ import annotations

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AdminRole, AuditEntry, DeliveryStatus, WebhookDelivery, WebhookEndpoint
from tests.helpers.admin import sign_in


async def test_a_disabled_webhook_is_shown_with_its_log_and_re_enabled(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    endpoint = WebhookEndpoint(
        url="https://hooks.example.com/warta",
        secret="s" * 32,
        event_types=["bounced"],
        enabled=False,
        disabled_reason="failing for 3 days",
    )
    session.add(endpoint)
    await session.flush()
    endpoint_id = endpoint.id
    session.add_all(
        [
            WebhookDelivery(
                endpoint_id=endpoint_id,
                event_id=7,
                status=DeliveryStatus.failed,
                attempts=12,
                response_code=503,
                last_error="503 Service Unavailable",
            ),
            WebhookDelivery(endpoint_id=endpoint_id, event_id=8, status=DeliveryStatus.delivered),
        ]
    )
    await session.commit()

    token = await sign_in(console, AdminRole.marketer)
    listed = await console.get("/admin/webhooks")
    assert "failing for 3 days" in listed.text
    log = await console.get(f"/admin/webhooks/{endpoint_id}", params={"status": "failed"})
    assert "503 Service Unavailable" in log.text and '<td class="num">8</td>' not in log.text
    assert "Re-enable" not in log.text
    refused = await console.post(f"/admin/webhooks/{endpoint_id}/enable", data={"csrf": token})
    assert refused.status_code == 403

    console.cookies.clear()
    token = await sign_in(console, AdminRole.admin)
    enabled = await console.post(f"/admin/webhooks/{endpoint_id}/enable", data={"csrf": token})
    assert enabled.status_code == 303
    session.expire_all()
    found = await session.get(WebhookEndpoint, endpoint_id)
    assert found is not None and found.enabled and found.disabled_reason == ""
    statuses = set(await session.scalars(sa.select(WebhookDelivery.status)))
    assert statuses == {DeliveryStatus.pending, DeliveryStatus.delivered}  # the failed one retried
    actions = list(await session.scalars(sa.select(AuditEntry.action)))
    assert "webhook.enable" in actions
