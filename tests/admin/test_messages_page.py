"""Transactional messages in the console: search by recipient and status, and a message's
status timeline in order."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.events import NewEvent, record_events
from app.models import AdminRole, EventKind, Message, MessageStatus, MessageStream, utcnow
from tests.helpers.admin import sign_in


async def test_messages_are_searched_and_each_has_its_timeline(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    rows = [
        Message(
            stream=MessageStream.transactional,
            status=status,
            from_email="app@example.com",
            to_email=to,
            subject=subject,
            tags=",receipt,",
        )
        for to, status, subject in [
            ("ada@example.com", MessageStatus.delivered, "Your receipt"),
            ("bob@example.com", MessageStatus.bounced, "Reset your password"),
        ]
    ]
    session.add_all(rows)
    await session.flush()
    first = rows[0].id
    start = utcnow() - timedelta(minutes=5)
    await record_events(
        session,
        [
            NewEvent(kind=EventKind.queued, message_id=first, at=start),
            NewEvent(kind=EventKind.sent, message_id=first, at=start + timedelta(seconds=1)),
            NewEvent(
                kind=EventKind.delivered,
                message_id=first,
                at=start + timedelta(seconds=2),
                data={"reply": "250 2.0.0 OK"},
            ),
        ],
    )
    await session.commit()
    await sign_in(console, AdminRole.viewer)

    by_status = await console.get("/admin/messages", params={"status": "bounced"})
    assert "Reset your password" in by_status.text and "Your receipt" not in by_status.text
    by_to = await console.get("/admin/messages", params={"to": "ADA@example.com"})
    assert "Your receipt" in by_to.text and "Reset your password" not in by_to.text
    assert "receipt" in (await console.get("/admin/messages", params={"tag": "receipt"})).text

    page = await console.get(f"/admin/messages/{first}")
    timeline = page.text.split('id="timeline"')[1]
    assert timeline.index("queued") < timeline.index("sent") < timeline.index("delivered")
    assert "250 2.0.0 OK" in timeline
    assert (await console.get("/admin/messages/999999")).status_code == 404
