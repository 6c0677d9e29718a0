"""The audience pages: lists, subscribers, a subscriber's timeline, import and export, each
change audited and refused by the server to a role without the scope."""

from __future__ import annotations

import csv
import io
import re

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.address_hash import hashed_address
from app.core.events import NewEvent, record_events
from app.models import (
    AdminRole,
    AuditEntry,
    EventKind,
    MailingList,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
)
from tests.helpers.admin import sign_in
from tests.helpers.api import eventually


async def _audited(session: AsyncSession, action: str) -> list[AuditEntry]:
    session.expire_all()
    return list(await session.scalars(sa.select(AuditEntry).where(AuditEntry.action == action)))


async def _subscriber(session: AsyncSession, email: str, list_id: int | None = None) -> int:
    subscriber = Subscriber(email=email, name="Ada", attributes={"city": "Oslo"})
    session.add(subscriber)
    await session.flush()
    if list_id is not None:
        session.add(
            Subscription(
                subscriber_id=subscriber.id, list_id=list_id, status=SubscriptionStatus.confirmed
            )
        )
    await session.commit()
    return subscriber.id


async def _list(session: AsyncSession, name: str) -> int:
    found = MailingList(name=name)
    session.add(found)
    await session.flush()
    await session.commit()
    return found.id


async def test_a_marketer_creates_renames_and_deletes_a_list_each_audited(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    token = await sign_in(console, AdminRole.marketer)
    created = await console.post("/admin/lists", data={"csrf": token, "name": "News"})
    assert created.status_code == 303
    list_id = int(created.headers["location"].rsplit("=", 1)[1])
    page = await console.get("/admin/lists")
    assert "News" in page.text

    taken = await console.post("/admin/lists", data={"csrf": token, "name": "News"})
    assert taken.status_code == 409
    assert "already exists" in taken.text

    renamed = await console.post(
        f"/admin/lists/{list_id}/rename", data={"csrf": token, "name": "Weekly news"}
    )
    assert renamed.status_code == 303
    confirm = await console.get(f"/admin/lists/{list_id}/delete")
    assert "Delete the list" in confirm.text and "Weekly news" in confirm.text
    session.expire_all()
    assert (await session.get(MailingList, list_id)) is not None  # asking deletes nothing

    deleted = await console.post(f"/admin/lists/{list_id}/delete", data={"csrf": token})
    assert deleted.status_code == 303
    session.expire_all()
    assert (await session.get(MailingList, list_id)) is None
    assert [e.details for e in await _audited(session, "list.rename")] == [
        {"from": "News", "to": "Weekly news"}
    ]
    assert len(await _audited(session, "list.create")) == 1
    assert len(await _audited(session, "list.delete")) == 1


async def test_a_viewer_is_refused_every_audience_change_by_the_server(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    news_id = await _list(session, "News")
    subscriber_id = await _subscriber(session, "ada@example.com", news_id)
    token = await sign_in(console, AdminRole.viewer)
    assert (await console.get("/admin/lists")).status_code == 200
    assert "New list" not in (await console.get("/admin/lists")).text
    for path, data in [
        ("/admin/lists", {"name": "Sneaky"}),
        (f"/admin/lists/{news_id}/rename", {"name": "Sneaky"}),
        (f"/admin/lists/{news_id}/delete", {}),
        (f"/admin/subscribers/{subscriber_id}", {"email": "x@example.com"}),
        (f"/admin/subscribers/{subscriber_id}/blocklist", {}),
        (f"/admin/subscribers/{subscriber_id}/erase", {}),
        ("/admin/imports", {}),
    ]:
        response = await console.post(path, data={"csrf": token, **data})
        assert response.status_code == 403, path
    session.expire_all()
    assert (await session.get(MailingList, news_id)).name == "News"  # type: ignore[union-attr]
    assert (await session.get(Subscriber, subscriber_id)) is not None


async def test_subscribers_are_searched_and_filtered(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    news_id, other_id = await _list(session, "News"), await _list(session, "Other")
    await _subscriber(session, "ada@example.com", news_id)
    await _subscriber(session, "bob@example.org", other_id)
    await sign_in(console, AdminRole.viewer)

    everyone = await console.get("/admin/subscribers")
    assert "ada@example.com" in everyone.text and "bob@example.org" in everyone.text
    by_email = await console.get("/admin/subscribers", params={"email": "example.org"})
    assert "bob@example.org" in by_email.text and "ada@example.com" not in by_email.text
    by_list = await console.get("/admin/subscribers", params={"list_id": news_id})
    assert "ada@example.com" in by_list.text and "bob@example.org" not in by_list.text
    blocked = await console.get("/admin/subscribers", params={"status": "blocklisted"})
    assert "No subscriber matches" in blocked.text


async def test_a_subscribers_page_shows_memberships_and_the_timeline_and_edits_are_audited(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    news_id = await _list(session, "News")
    subscriber_id = await _subscriber(session, "ada@example.com", news_id)
    await record_events(
        session,
        [
            NewEvent(
                kind=EventKind.delivered, subscriber_id=subscriber_id, email="ada@example.com"
            ),
            NewEvent(kind=EventKind.opened, subscriber_id=subscriber_id, email="ada@example.com"),
        ],
    )
    await session.commit()
    token = await sign_in(console, AdminRole.marketer)
    page = await console.get(f"/admin/subscribers/{subscriber_id}")
    assert page.status_code == 200
    assert re.search(r"<td>News</td><td>confirmed</td>", page.text)
    timeline = page.text.split('id="timeline"')[1]
    assert timeline.index("opened") < timeline.index("delivered")  # newest first

    edited = await console.post(
        f"/admin/subscribers/{subscriber_id}",
        data={"csrf": token, "email": "ada@example.com", "name": "Ada L.", "status": "enabled"},
    )
    assert edited.status_code == 303
    blocked = await console.post(
        f"/admin/subscribers/{subscriber_id}/blocklist", data={"csrf": token}
    )
    assert blocked.status_code == 303
    session.expire_all()
    found = await session.get(Subscriber, subscriber_id)
    assert found is not None and found.name == "Ada L."
    assert found.status is SubscriberStatus.blocklisted
    assert [e.details for e in await _audited(session, "subscriber.edit")] == [
        {"name": ["Ada", "Ada L."]}
    ]
    assert len(await _audited(session, "subscriber.blocklist")) == 1


async def test_erasure_asks_first_then_keeps_only_the_hash(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    subscriber_id = await _subscriber(session, "ada@example.com")
    token = await sign_in(console, AdminRole.marketer)
    confirm = await console.get(f"/admin/subscribers/{subscriber_id}/erase")
    assert "cannot be undone" in confirm.text
    erased = await console.post(f"/admin/subscribers/{subscriber_id}/erase", data={"csrf": token})
    assert erased.status_code == 303
    session.expire_all()
    assert (await session.get(Subscriber, subscriber_id)) is None
    kept = await session.scalar(sa.select(Suppression.address))
    assert kept == hashed_address("ada@example.com")
    entries = await _audited(session, "subscriber.erase")
    assert [(e.target, e.details) for e in entries] == [(f"subscriber:{subscriber_id}", {})]


async def test_a_csv_import_reports_progress_and_rejected_rows_and_the_export_has_them(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    news_id = await _list(session, "News")
    token = await sign_in(console, AdminRole.marketer)
    body = (
        "email,name,city\nada@example.com,Ada,Oslo\nnot-an-address,Bob,Rome\ncy@example.com,Cy,\n"
    )
    started = await console.post(
        "/admin/imports",
        data={"csrf": token, "list_ids": str(news_id), "mode": "subscribe"},
        files={"file": ("people.csv", body.encode(), "text/csv")},
    )
    assert started.status_code == 303, started.text
    job_path = started.headers["location"]

    async def done() -> bool:
        progress = (await console.get(f"{job_path}/progress.json")).json()
        return bool(progress["done"])

    await eventually(done, what="the import finishing")
    progress = (await console.get(f"{job_path}/progress.json")).json()
    assert progress | {"percent": 100.0} == progress
    assert (progress["status"], progress["rows_imported"], progress["rows_failed"]) == (
        "finished",
        2,
        1,
    )
    page = await console.get(job_path)
    assert "not-an-address" in page.text and "Rejected rows" in page.text
    assert len(await _audited(session, "import.start")) == 1

    export = await console.get("/admin/exports/subscribers.csv", params={"list_id": news_id})
    assert export.status_code == 200
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert sorted(r["email"] for r in rows) == ["ada@example.com", "cy@example.com"]
