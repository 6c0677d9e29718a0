"""Bounces and suppressions in the console: the raw report is shown, a suppression is lifted
(audited; a bounce's suppression also re-enables the subscriber), roles refused by the server."""

from __future__ import annotations

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    AdminRole,
    AuditEntry,
    Bounce,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionScope,
)
from tests.helpers.admin import sign_in

RAW = "Reporting-MTA: dns; mx.example.com\nFinal-Recipient: rfc822; ada@example.com\nStatus: 5.1.1"


async def _seed(session: AsyncSession) -> int:
    session.add_all(
        [
            Subscriber(email="ada@example.com", status=SubscriberStatus.blocklisted),
            Suppression(
                address="ada@example.com",
                reason="hard bounce",
                source="bounce",
                scope=SuppressionScope.all,
            ),
            Suppression(
                address="bob@example.org", reason="asked", scope=SuppressionScope.broadcast
            ),
        ]
    )
    bounce = Bounce(
        email="ada@example.com",
        kind="bounce",
        source="dsn",
        bounce_class="bad-mailbox",
        severity="hard",
        status="5.1.1",
        diagnostic="550 5.1.1 no such user",
        raw=RAW,
    )
    session.add(bounce)
    await session.flush()
    bounce_id = bounce.id
    await session.commit()
    return bounce_id


async def test_bounces_are_listed_with_their_raw_report(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    bounce_id = await _seed(session)
    await sign_in(console, AdminRole.viewer)
    listed = await console.get("/admin/bounces", params={"email": "ada@example.com"})
    assert "bad-mailbox" in listed.text
    assert (
        "No bounce for this filter"
        in (await console.get("/admin/bounces", params={"email": "nobody@example.com"})).text
    )
    detail = await console.get(f"/admin/bounces/{bounce_id}")
    assert "Final-Recipient: rfc822; ada@example.com" in detail.text
    assert (await console.get("/admin/bounces/999999")).status_code == 404


async def test_suppressions_are_filtered_and_lifted_by_an_admin_only(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    await _seed(session)
    token = await sign_in(console, AdminRole.marketer)
    scoped = await console.get("/admin/suppressions", params={"scope": "broadcast"})
    assert "bob@example.org" in scoped.text and "ada@example.com" not in scoped.text
    assert "Lift" not in scoped.text
    refused = await console.post(
        "/admin/suppressions/lift", data={"csrf": token, "address": "ada@example.com"}
    )
    assert refused.status_code == 403
    added = await console.post(
        "/admin/suppressions", data={"csrf": token, "address": "cy@example.com"}
    )
    assert added.status_code == 403

    console.cookies.clear()
    token = await sign_in(console, AdminRole.admin)
    lifted = await console.post(
        "/admin/suppressions/lift", data={"csrf": token, "address": "ada@example.com"}
    )
    assert lifted.status_code == 303
    added = await console.post(
        "/admin/suppressions",
        data={"csrf": token, "address": "Cy@Example.com", "reason": "asked", "scope": "all"},
    )
    assert added.status_code == 303
    session.expire_all()
    left = set(await session.scalars(sa.select(Suppression.address)))
    assert left == {"bob@example.org", "cy@example.com"}
    ada = await session.scalar(sa.select(Subscriber).where(Subscriber.email == "ada@example.com"))
    assert ada is not None and ada.status is SubscriberStatus.enabled  # the bounce's block undone
    entries = list(await session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id)))
    assert [(e.action, e.target) for e in entries if e.action.startswith("suppression.")] == [
        ("suppression.lift", "address:ada@example.com"),
        ("suppression.add", "address:cy@example.com"),
    ]
